"""Issue #12 against real processes: keys in a real Consul's KV, counters in a real redis-server, two
wrapper replicas (60 s windows) and a third, fail-closed one with 3 s windows (for the SDK's back-off)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid

import httpx
import openai
import pytest

from common.settings import ApiKey, key_digest
from tests.support.procs import ROOT, Consul, get_json, post, wait_until
from tests.support.redis_server import RedisServer
from tests.support.servers import Server, routable, start_worker, start_wrapper, unique_model
from wrapper.key_watch import entry_json

ADMIN_KEY = "sk-admin-limits-0123456789"
FREE_KEY = "sk-free-limits-0123456789"  # configured, no limits: the reference for unlimited answers


class Stack:
    def __init__(self, consul: Consul, redis: RedisServer, a: Server, b: Server, quick: Server, model: str,
                 slow_model: str, prefix: str, config: str) -> None:
        self.consul, self.redis, self.a, self.b, self.quick = consul, redis, a, b, quick
        self.model, self.slow_model, self.prefix, self.config = model, slow_model, prefix, config

    def put_key(self, name: str, **limits) -> str:
        """A new key in KV (as the admin command writes it), once both replicas accept it."""
        key = f"sk-{name}-{uuid.uuid4().hex}"
        entry = ApiKey(key_sha256=key_digest(key).hex(), name=name, **limits)
        request = urllib.request.Request(f"http://{self.consul.addr}/v1/kv/{self.prefix}{name}",
                                         data=entry_json(entry), method="PUT")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        for wrapper in (self.a, self.b, self.quick):
            wait_until(lambda w=wrapper: get_json(w.base_url + "/models", auth(key))[0] == 200, 10, f"{name} known")
        return key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(model: str, text: str = "alpha beta gamma", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
def stack(module_procs, consul, tmp_path_factory) -> Stack:
    redis = RedisServer(module_procs)
    model, slow_model = unique_model("limits"), unique_model("slow")
    prefix = f"oaw-e2e-{uuid.uuid4().hex[:8]}/keys/"
    folder = tmp_path_factory.mktemp("limits")
    keys = (f"  api_keys:\n    - {{key: {ADMIN_KEY}, name: admin, admin: true}}\n"
            f"    - {{key: {FREE_KEY}, name: free}}\n  keys_consul_prefix: {prefix}\n")
    # a generous Redis timeout: on a loaded machine a slow answer must not pass for an outage (a killed
    # Redis refuses connections at once, whatever the timeout)
    pair = folder / "pair.yaml"
    pair.write_text(f"wrapper:\n{keys}redis:\n  timeout: 2.0\n")
    quick = folder / "quick.yaml"
    quick.write_text(f"wrapper:\n{keys}  rate_window: 3\nredis:\n  timeout: 2.0\n  fail_closed: true\n")
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model)
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", slow_model, "--delay", "0.2")
    env = {"REDIS_URL": redis.url}
    a, b, q = (start_wrapper(module_procs, consul, "--config", str(path), env=env) for path in (pair, pair, quick))
    for wrapper in (a, b, q):
        wait_until(lambda w=wrapper: routable(w, model, auth(ADMIN_KEY)) and routable(w, slow_model, auth(ADMIN_KEY)),
                   10, "models routable")
    return Stack(consul, redis, a, b, q, model, slow_model, prefix, str(pair))


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]


RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


def test_ten_requests_a_minute_hold_across_two_replicas(stack):
    key = stack.put_key("rpm10", rpm=10)
    answers = [post((stack.a if i % 2 == 0 else stack.b).base_url + "/chat/completions", chat_body(stack.model),
                    auth(key)) for i in range(30)]
    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert (len(ok), len(refused)) == (10, 20)
    for status, headers, body in answers:
        headers = {k.lower(): v for k, v in headers.items()}
        assert all(h in headers for h in RATE_HEADERS), headers
        assert headers["x-ratelimit-limit-requests"] == "10"
        if status == 429:
            assert error_of(body)["code"] == "rate_limit_exceeded"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 1 <= int(headers["retry-after"]) <= 60
    remaining = [int({k.lower(): v for k, v in h.items()}["x-ratelimit-remaining-requests"]) for _, h, _ in ok]
    assert remaining == list(range(9, -1, -1))  # one count, shared by both replicas


def test_the_openai_sdk_backs_off_on_the_headers_and_then_succeeds(stack):
    key = stack.put_key("sdk", rpm=2)
    seen: list[tuple[float, int, dict]] = []

    def record(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, dict(response.headers)))

    http = httpx.Client(event_hooks={"response": [record]})
    with openai.OpenAI(base_url=stack.quick.base_url, api_key=key, max_retries=5, timeout=30, http_client=http) as sdk:
        started = time.monotonic()
        for _ in range(6):  # the third waits for the window (3 s on this wrapper) to make room
            answer = sdk.chat.completions.create(model=stack.model, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "hi"  # every call succeeds, retried or not
            if 429 in [s for _, s, _ in seen]:
                break
        assert time.monotonic() - started < 30  # bounded: the SDK waited as told, not its own long back-off
    statuses = [s for _, s, _ in seen]
    assert 429 in statuses and statuses[-1] == 200
    first_refusal = statuses.index(429)
    refused_at, _, headers = seen[first_refusal]
    assert int(headers["retry-after-ms"]) > 0 and "x-ratelimit-reset-requests" in headers
    # the SDK's next try came no sooner than the wrapper said
    assert seen[first_refusal + 1][0] - refused_at >= int(headers["retry-after-ms"]) / 1000 * 0.9


def stream_raw(wrapper: Server, key: str, body: dict) -> tuple[int, dict, bytes]:
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=body, headers=auth(key),
                      timeout=30) as response:
        return response.status_code, dict(response.headers), response.read()


def normalised(raw: bytes) -> bytes:
    """A stream with its per-request id and timestamp blanked: EchoGen's words are deterministic."""
    raw = re.sub(rb'"id":"[^"]+"', b'"id":"-"', raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def test_a_token_limit_holds_for_streams_that_did_not_ask_for_usage(stack):
    body = chat_body(stack.model, "one two three four five six", stream=True)
    _, _, reference = stream_raw(stack.a, FREE_KEY, body)
    _, _, with_usage = stream_raw(stack.a, FREE_KEY, {**body, "stream_options": {"include_usage": True}})
    usage = json.loads(with_usage.split(b"data: ")[-2].strip())["usage"]
    per_request = usage["prompt_tokens"] + usage["completion_tokens"]
    assert per_request > 0
    key = stack.put_key("tpm", tpm=2 * per_request + 1)  # room for 3 requests: 0, 1x, 2x < limit; not 3x
    answers = [stream_raw(stack.a if i % 2 == 0 else stack.b, key, body) for i in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    for _, headers, raw in answers[:3]:
        assert normalised(raw) == normalised(reference)  # byte for byte what an unlimited client gets
        assert b'"usage"' not in raw
        assert headers["x-ratelimit-limit-tokens"] == str(2 * per_request + 1)  # sent before the stream's body
    assert [int(h["x-ratelimit-remaining-tokens"]) for _, h, _ in answers[:3]] == sorted(
        (int(h["x-ratelimit-remaining-tokens"]) for _, h, _ in answers[:3]), reverse=True)
    status, headers, raw = answers[3]
    assert error_of(raw)["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-tokens"] == str(2 * per_request + 1)
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert "retry-after" in headers


def test_concurrent_requests_over_the_limit_get_429_and_the_slot_comes_back(stack):
    key = stack.put_key("one-at-a-time", max_concurrent=1)
    slow = chat_body(stack.slow_model, " ".join(f"w{i}" for i in range(50)), stream=True)
    with httpx.stream("POST", stack.a.base_url + "/chat/completions", json=slow, headers=auth(key),
                      timeout=30) as holding:
        assert holding.status_code == 200
        next(holding.iter_lines())  # the stream is under way: it holds the key's one slot
        status, _, body = post(stack.b.base_url + "/chat/completions", chat_body(stack.model), auth(key))
        assert status == 429 and error_of(body)["code"] == "rate_limit_exceeded"
    # the client hung up mid-stream: the wrapper gives the slot back
    wait_until(lambda: post(stack.b.base_url + "/chat/completions", chat_body(stack.model), auth(key))[0] == 200,
               10, "the slot to be free again")


def test_a_key_over_its_token_budget_gets_429_insufficient_quota(stack):
    key = stack.put_key("budgeted", budget={"tokens": 1, "per": "day"})
    assert post(stack.a.base_url + "/chat/completions", chat_body(stack.model), auth(key))[0] == 200
    status, headers, body = post(stack.b.base_url + "/chat/completions", chat_body(stack.model), auth(key))
    assert status == 429 and error_of(body)["code"] == "insufficient_quota"
    assert headers["x-should-retry"] == "false"  # the openai SDK does not retry it


def test_a_keys_limit_for_one_model_holds_across_replicas_and_spares_its_other_models(stack):
    key = stack.put_key("per-model", rpm=100, model_limits={"limits-*": {"rpm": 2}})
    statuses = [post((stack.a if i % 2 == 0 else stack.b).base_url + "/chat/completions", chat_body(stack.model),
                     auth(key)) for i in range(3)]
    assert [s for s, _, _ in statuses] == [200, 200, 429]
    assert f"for model '{stack.model}'" in error_of(statuses[2][2])["message"]
    assert statuses[0][1]["x-ratelimit-limit-requests"] == "2"  # the tighter of the key's and the model's
    assert post(stack.b.base_url + "/chat/completions", chat_body(stack.slow_model, "hi"), auth(key))[0] == 200


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wrapper.keys_cli", "--config", stack.config, *args], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "CONSUL_HTTP_ADDR": stack.consul.addr},
                          capture_output=True, text=True, timeout=30)


def test_a_key_made_with_the_admin_command_works_on_both_replicas_within_a_second(stack):
    made = run_cli(stack, "create", "--name", "cli-made", "--models", f"{stack.model}", "--rpm", "100",
                   "--model-limits", '{"other-*": {"tpm": 50}}')
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-")

    def works_on(wrapper: Server) -> bool:
        return post(wrapper.base_url + "/chat/completions", chat_body(stack.model), auth(key))[0] == 200

    wait_until(lambda: works_on(stack.a) and works_on(stack.b), 1.0, "the new key on both replicas")
    listed = run_cli(stack, "list")
    assert listed.returncode == 0, listed.stderr
    entry = next(json.loads(line) for line in listed.stdout.splitlines() if '"cli-made"' in line)
    assert (entry["rpm"], entry["models"], entry["model_limits"]) == (100, [stack.model], {"other-*": {"tpm": 50}})
    assert key not in listed.stdout and key_digest(key).hex() not in listed.stdout

    revoked = run_cli(stack, "revoke", "--name", "cli-made")
    assert revoked.returncode == 0, revoked.stderr

    def refused_on(wrapper: Server) -> bool:
        status, _, body = post(wrapper.base_url + "/chat/completions", chat_body(stack.model), auth(key))
        return status == 401 and error_of(body)["code"] == "invalid_api_key"

    wait_until(lambda: refused_on(stack.a) and refused_on(stack.b), 1.0, "the revoked key refused on both")


def admin_usage(wrapper: Server, **query) -> list[dict]:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = get_json(f"{wrapper.url}/admin/usage?{params}", auth(ADMIN_KEY))
    assert status == 200, body
    return body["data"]


def test_usage_figures_for_a_known_sequence_are_exact(stack):
    key = stack.put_key("counted", rpm=4)
    expected_prompt = expected_completion = 0
    for i, text in enumerate(["a b", "c d e", "f g h i"]):
        status, _, raw = post((stack.a if i % 2 else stack.b).base_url + "/chat/completions",
                              chat_body(stack.model, text), auth(key))
        assert status == 200
        usage = json.loads(raw)["usage"]
        expected_prompt += usage["prompt_tokens"]
        expected_completion += usage["completion_tokens"]
    stream_body = chat_body(stack.model, "j k l m n", stream=True)
    assert stream_raw(stack.a, key, stream_body)[0] == 200  # no include_usage: the wrapper gets it all the same
    _, _, with_usage = stream_raw(stack.a, FREE_KEY, {**stream_body, "stream_options": {"include_usage": True}})
    usage = json.loads(with_usage.split(b"data: ")[-2].strip())["usage"]
    expected_prompt += usage["prompt_tokens"]
    expected_completion += usage["completion_tokens"]
    assert post(stack.b.base_url + "/chat/completions", chat_body(stack.model), auth(key))[0] == 429  # 5th of 4/min

    expected = {"requests": 5, "prompt_tokens": expected_prompt, "completion_tokens": expected_completion, "errors": 1}

    def figures() -> dict[str, int]:
        rows = admin_usage(stack.a, key_name="counted")
        assert {(r["key_name"], r["model"]) for r in rows} == {("counted", stack.model)}
        return {f: sum(r[f] for r in rows) for f in expected}

    # each replica writes its figures once a second: wait for both, then they must be exact
    wait_until(lambda: figures()["requests"] == 5, 10, "both replicas' usage written")
    assert figures() == expected
    assert admin_usage(stack.b, key_name="counted", model="other-model") == []
    assert admin_usage(stack.b, key_name="counted", start_time=int(time.time()) + 7200,
                       end_time=int(time.time()) + 9000) == []


def test_usage_needs_an_admin_key(stack):
    status, body = get_json(stack.a.url + "/admin/usage", auth(FREE_KEY))
    assert status == 403 and body["error"]["code"] == "insufficient_permissions"
    assert get_json(stack.a.url + "/admin/usage")[0] == 401
    status, body = get_json(stack.a.url + "/admin/usage?start_time=yesterday", auth(ADMIN_KEY))
    assert status == 400 and body["error"]["param"] == "start_time"


def health_limits(wrapper: Server) -> dict:
    return get_json(wrapper.url + "/health")[1]["limits"]


def test_a_dead_redis_lets_requests_through_once_logged_and_counted_then_limits_return(stack):
    # last in the module: it stops the module's Redis (and starts it again, empty)
    key = stack.put_key("outage", rpm=2)
    quick_key = stack.put_key("outage-quick", rpm=100)
    stack.redis.stop()
    for _ in range(6):  # three times the limit, all through: fail open
        status, headers, _ = post(stack.a.base_url + "/chat/completions", chat_body(stack.model), auth(key))
        assert status == 200
    health = health_limits(stack.a)
    assert (health["store"], health["state"], health["outages"]) == ("redis", "down", 1)
    assert health["unchecked"] >= 5  # the first may be the one that found Redis gone, also let through
    assert stack.a.proc.output().count("Redis unreachable") == 1
    status, _, body = post(stack.quick.base_url + "/chat/completions", chat_body(stack.model), auth(quick_key))
    assert status == 503 and error_of(body)["code"] == "rate_limiter_unavailable"  # fail-closed

    stack.redis.start()
    wait_until(lambda: health_limits(stack.a)["state"] == "up", 10, "the wrapper to see Redis back")
    statuses = [post(stack.a.base_url + "/chat/completions", chat_body(stack.model), auth(key))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    wait_until(lambda: health_limits(stack.quick)["state"] == "up", 10, "the fail-closed wrapper to see Redis back")
    assert post(stack.quick.base_url + "/chat/completions", chat_body(stack.model), auth(quick_key))[0] == 200
