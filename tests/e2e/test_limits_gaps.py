"""Issue #12's last parts against real processes (a real Consul, a real EchoGen worker, real wrappers):
per-key usage counters in /metrics by the key's name (summed over `--processes 2`), the limiter's Redis
outages and unchecked requests there too, the usage table on the status page, and the wrapper's own Consul
registration, which makes a second replica without Redis warn at start-up."""
from __future__ import annotations

import json
import subprocess
import urllib.request
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.settings import key_digest
from tests.e2e.test_auth import ACL_HCL, make_token
from tests.support.procs import ROOT, Consul, free_port, get_json, post, wait_until
from tests.support.servers import INSIDER, SECRET_ENV, Server, routable, start_worker, start_wrapper, unique_model

ADMIN_KEY = "sk-gaps-admin-0123456789"
ALICE_KEY = "sk-gaps-alice-0123456789"
NAMELESS_KEY = "sk-gaps-nameless-0123456789"
GATEWAY = "openai-api-wrapper-gateway"
REPLICA_WARNING = "other wrapper replica(s) are registered in Consul"
KEYS = (f"wrapper:\n  api_keys:\n    - key: {ADMIN_KEY}\n      name: ops\n      admin: true\n"
        f"    - key: {ALICE_KEY}\n      name: alice\n      rpm: 1000\n    - key: {NAMELESS_KEY}\n")
ACL_ROOT = "root-token-1234"  # ACL_HCL's master token
Samples = dict[tuple[str, frozenset], float]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str, text: str = "one two three four") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def metrics_text(server: Server) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def scrape(server: Server) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics_text(server)) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def gateway_id(server: Server) -> str:
    return f"{GATEWAY}-127.0.0.1-{server.port}"


def write(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


@pytest.fixture(scope="module")
def stack(module_procs, consul, tmp_path_factory):
    """A worker for `model`; a wrapper with three keys (ops: admin, alice: rpm 1000, one without a name) and
    no Redis, so its counters are in memory."""
    tmp = tmp_path_factory.mktemp("limits-gaps")
    model = unique_model("gaps")
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model)
    wrapper = start_wrapper(module_procs, consul, "--config", write(tmp, "keys.yaml", KEYS))
    wait_until(lambda: routable(wrapper, model, auth(ADMIN_KEY)), 10, "model routable")
    return {"wrapper": wrapper, "model": model, "tmp": tmp}


def test_key_counters_in_metrics_follow_a_known_sequence_by_name_never_the_key(stack):
    wrapper, model = stack["wrapper"], stack["model"]
    before = scrape(wrapper)
    prompt = completion = 0
    for i in range(3):
        status, _, body = post(wrapper.base_url + "/chat/completions", chat(model, "alpha " * (i + 1)), auth(ALICE_KEY))
        assert status == 200, body
        usage = json.loads(body)["usage"]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
    missing = unique_model("nowhere")  # not in the routing table: an error, labelled `unknown`
    assert post(wrapper.base_url + "/chat/completions", chat(missing), auth(ALICE_KEY))[0] == 404
    assert post(wrapper.base_url + "/chat/completions", chat(model), auth(NAMELESS_KEY))[0] == 200
    after = scrape(wrapper)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    alice = {"key_name": "alice", "model": model}
    assert moved("oaw_key_requests_total", **alice) == 3
    assert prompt > 0 and moved("oaw_key_prompt_tokens_total", **alice) == prompt
    assert completion > 0 and moved("oaw_key_completion_tokens_total", **alice) == completion
    assert moved("oaw_key_errors_total", **alice) == 0
    assert moved("oaw_key_requests_total", key_name="alice", model="unknown") == 1
    assert moved("oaw_key_errors_total", key_name="alice", model="unknown") == 1
    assert moved("oaw_key_requests_total", key_name="unnamed", model=model) == 1
    text = metrics_text(wrapper)
    assert missing not in text  # a client cannot add series by inventing model names
    for key in (ALICE_KEY, NAMELESS_KEY):
        assert key not in text and key_digest(key).hex()[:8] not in text  # neither a key nor its digest
    assert value(after, "oaw_rate_limiter_outages_total") == 0  # no Redis configured: nothing to lose


def test_promtool_accepts_the_key_series(stack):
    wrapper = stack["wrapper"]
    assert post(wrapper.base_url + "/chat/completions", chat(stack["model"]), auth(ALICE_KEY))[0] == 200
    result = subprocess.run(["promtool", "check", "metrics"], input=metrics_text(wrapper).encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert "oaw_key_requests_total{" in metrics_text(wrapper)


def test_status_shows_the_usage_by_key_as_admin_usage_does_and_never_a_key(stack):
    wrapper, model = stack["wrapper"], stack["model"]
    assert post(wrapper.base_url + "/chat/completions", chat(model), auth(ALICE_KEY))[0] == 200
    code, data = get_json(wrapper.url + "/status.json", auth(ADMIN_KEY))
    assert code == 200, data
    row = next(r for r in data["usage"]["rows"] if (r["key_name"], r["model"]) == ("alice", model))
    code, usage = get_json(wrapper.url + "/admin/usage?key_name=alice&model=" + model, auth(ADMIN_KEY))
    assert code == 200, usage
    since = int(datetime.fromisoformat(data["usage"]["since"]).timestamp())
    hours = [u for u in usage["data"] if u["start_time"] >= since]
    for field in ("requests", "prompt_tokens", "completion_tokens", "errors"):
        assert row[field] == sum(u[field] for u in hours), field  # the same figures, summed over the hours shown
    assert row["requests"] >= 1 and row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    page = httpx.get(wrapper.url + "/status", headers=auth(ADMIN_KEY), timeout=10).text
    assert f'data-usage-key="alice" data-usage-model="{model}"' in page
    assert f'<td data-requests>{row["requests"]}</td>' in page
    for key in (ADMIN_KEY, ALICE_KEY, NAMELESS_KEY):
        assert key not in page and key not in json.dumps(data)


def test_the_wrapper_registers_itself_unrouted_and_a_second_replica_without_redis_warns(stack, consul: Consul, procs):
    first = stack["wrapper"]
    wait_until(lambda: gateway_id(first) in consul.services(), 15, "the first wrapper registered in Consul")
    entry = consul.services()[gateway_id(first)]
    assert entry["Service"] == GATEWAY and entry["Tags"] == []  # no marker tag: discovery never routes to it
    assert GATEWAY not in {m["id"] for m in get_json(first.base_url + "/models", auth(ADMIN_KEY))[1]["data"]}
    second = start_wrapper(procs, consul)  # open, and no redis.url
    wait_until(lambda: REPLICA_WARNING in second.proc.output(), 15, f"the replica warning\n{second.proc.output()}")
    assert gateway_id(first) in second.proc.output()  # it names the other replica
    wait_until(lambda: gateway_id(second) in consul.services(), 15, "the second wrapper registered")
    code, data = get_json(second.url + "/status.json")
    assert code == 200 and "usage" not in data  # an open wrapper keeps no usage: no table
    second.proc.stop()
    wait_until(lambda: gateway_id(second) not in consul.services(), 15, "the stopped wrapper deregistered")


def test_with_two_processes_key_counters_and_unchecked_requests_are_the_sum(stack, consul: Consul, procs):
    """Redis configured but dead: every request of alice (rpm) goes through unchecked and is counted; the
    key's counters and the limiter's are summed over both processes. With redis.url set, no replica warning."""
    wrapper_one, model = stack["wrapper"], stack["model"]
    wait_until(lambda: gateway_id(wrapper_one) in consul.services(), 15, "the first wrapper registered")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    config = write(stack["tmp"], "dead-redis.yaml", KEYS + f"redis:\n  url: {dead_redis}\n  retry_interval: 60\n")
    wrapper = start_wrapper(procs, consul, "--processes", "2", "--config", config, env=SECRET_ENV)
    wait_until(lambda: all(routable(wrapper, model, auth(ADMIN_KEY)) for _ in range(10)), 20, "routable in both")
    pids: set[int] = set()

    def both_processes_answered() -> bool:
        pids.add(get_json(wrapper.url + "/health", INSIDER)[1]["pid"])
        return len(pids) == 2

    wait_until(both_processes_answered, 20, "both processes to answer")
    n = 12
    for _ in range(n):  # a new connection each time: the kernel spreads them over the two processes
        assert post(wrapper.base_url + "/chat/completions", chat(model), auth(ALICE_KEY))[0] == 200

    def summed() -> bool:
        return all((value(s := scrape(wrapper), "oaw_key_requests_total", key_name="alice", model=model) == n
                    and value(s, "oaw_rate_limiter_unchecked_total") == n) for _ in range(6))

    wait_until(summed, 15, f"alice's requests and the unchecked requests == {n} in every scrape")
    assert 1 <= value(scrape(wrapper), "oaw_rate_limiter_outages_total") <= 2  # once per process that tried
    wait_until(lambda: gateway_id(wrapper) in consul.services(), 15, "registered once, by its first process")
    assert REPLICA_WARNING not in wrapper.proc.output()  # Redis is configured: the limits are shared


def test_under_acls_the_shipped_wrapper_policy_lets_it_register_and_a_read_only_token_only_warns(procs):
    """deploy/consul/acl/wrapper.hcl, as shipped, on a dev agent with ACLs on (default deny)."""
    consul = Consul(procs, extra_hcl=ACL_HCL, name="consul-acl-gateway")
    shipped = make_token(consul, "wrapper", (ROOT / "deploy" / "consul" / "acl" / "wrapper.hcl").read_text())
    read_only = make_token(consul, "read-only", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }')
    allowed = start_wrapper(procs, consul, env={"CONSUL_HTTP_TOKEN": shipped})
    wait_until(lambda: gateway_id(allowed) in consul.services(ACL_ROOT), 15, "the wrapper registered with its token")
    refused = start_wrapper(procs, consul, env={"CONSUL_HTTP_TOKEN": read_only})
    wait_until(lambda: "may not register it" in refused.proc.output(), 15, f"the warning\n{refused.proc.output()}")
    assert gateway_id(refused) not in consul.services(ACL_ROOT)
    assert get_json(refused.url + "/health")[0] == 200 and "Traceback" not in refused.proc.output()
