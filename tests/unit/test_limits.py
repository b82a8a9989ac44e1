"""Issue #12 in process: usage extraction, the sliding windows, the limiter's refusals and its circuit,
keys from KV, the settings."""
from __future__ import annotations

import asyncio
import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from common import wire
from common.errors import RateLimited, Unavailable
from common.settings import ApiKey, Settings, load_settings
from common.usage import StreamUsage, TokenUsage, from_json_answer
from tests.support.config import config_error
from wrapper.auth import KeyRing
from wrapper.counters import MemoryStore, Quota
from wrapper.key_watch import entry_json, parse_entries
from wrapper.limits import Limiter, _without_usage_chunk

USAGE_CHUNK = b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
CONTENT = b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
STREAM = CONTENT + CONTENT + USAGE_CHUNK + wire.DONE_EVENT


def run(coro):
    return asyncio.run(coro)


# ---- usage ---------------------------------------------------------------------------------------

def test_the_usage_of_a_json_answer():
    assert from_json_answer(b'{"usage": {"prompt_tokens": 2, "completion_tokens": 5}}') == TokenUsage(2, 5)
    assert from_json_answer(b'{"choices": []}') is None
    assert from_json_answer(b'not json "usage"') is None


@pytest.mark.parametrize("size", [1, 7, 50, len(STREAM)])
def test_the_usage_of_a_stream_whatever_its_chunking(size):
    meter = StreamUsage()
    for i in range(0, len(STREAM), size):
        meter.feed(STREAM[i:i + size])
    assert meter.usage == TokenUsage(3, 4)


@pytest.mark.parametrize("size", [1, 7, 50, len(STREAM)])
def test_the_wrappers_usage_chunk_is_dropped_and_nothing_else(size):
    out, pending = b"", b""
    for i in range(0, len(STREAM), size):
        chunk, pending = _without_usage_chunk(pending + STREAM[i:i + size])
        out += chunk
    assert out + pending == CONTENT + CONTENT + wire.DONE_EVENT


@pytest.mark.parametrize("seconds, text", [(0.02, "20ms"), (1.5, "1.5s"), (6, "6s"), (360, "6m0s"), (59.9999, "60s")])
def test_reset_durations_read_as_openais(seconds, text):
    assert wire.duration(seconds) == text


# ---- the windows ---------------------------------------------------------------------------------

def quota(counter: str = "k", **limits) -> tuple[Quota, ...]:
    fields = {"rpm": None, "tpm": None, "max_concurrent": None, "budget": None, **limits}
    return (Quota(counter, fields["rpm"], fields["tpm"], fields["max_concurrent"], fields["budget"], "d2026-11-26",
                  86400, limits.get("estimate", 0)),)


def test_requests_per_window_are_exact():
    async def go():
        store = MemoryStore()
        verdicts = [await store.admit(quota(rpm=3), 60) for _ in range(5)]
        return [v.refused for v in verdicts], [v.figures[0].requests for v in verdicts]
    refused, counts = run(go())
    assert refused == [None, None, None, "rpm", "rpm"]
    assert counts == [1, 2, 3, 3, 3]


def test_the_token_estimate_is_replaced_by_the_real_usage():
    from wrapper.counters import Settlement

    async def go():
        store, q = MemoryStore(), quota(tpm=100, estimate=40)
        first = await store.admit(q, 60)
        assert first.figures[0].tokens == 40
        await store.settle(Settlement(q, first.bucket, 10, 5, 5, False, "k", "m", 0), 60)
        return await store.admit(q, 60)
    assert run(go()).figures[0].tokens == 10 + 40  # the real 10, and the new request's estimate


def test_a_request_is_counted_by_all_its_quotas_or_by_none():
    async def go():
        store = MemoryStore()
        both = quota("k", rpm=10) + quota("k:m", rpm=1)
        first = await store.admit(both, 60)
        second = await store.admit(both, 60)  # the model's quota refuses: the key's must not count it
        other = await store.admit(quota("k", rpm=10), 60)
        return first, second, other
    first, second, other = run(go())
    assert first.refused is None and [f.requests for f in first.figures] == [1, 1]
    assert (second.refused, second.refused_by) == ("rpm", 1)
    assert other.figures[0].requests == 2


def test_concurrency_and_budget():
    from wrapper.counters import Settlement

    async def go():
        store = MemoryStore()
        one = quota(max_concurrent=1)
        first = await store.admit(one, 60)
        assert (await store.admit(one, 60)).refused == "concurrency"
        await store.settle(Settlement(one, first.bucket, 0, 0, 0, False, "k", "m", 0), 60)
        assert (await store.admit(one, 60)).refused is None
        budget = quota(budget=10)
        admitted = await store.admit(budget, 60)
        await store.settle(Settlement(budget, admitted.bucket, 10, 6, 4, False, "k", "m", 0), 60)
        return (await store.admit(budget, 60)).refused
    assert run(go()) == "budget"


# ---- the limiter ---------------------------------------------------------------------------------

def limiter(**redis) -> Limiter:
    return Limiter(Settings.model_validate({"redis": {"retry_interval": 0.01, **redis}}))


def body(stream: bool = False) -> bytes:
    return json.dumps({"model": "m", "messages": [], "stream": stream}).encode()


def test_over_the_rpm_is_429_rate_limit_exceeded_with_openais_headers():
    key = ApiKey(key="sk-limited-000", name="team", rpm=1)

    async def go():
        lim = limiter()
        ticket = await lim.admit(key, "m", body(), False)
        assert ticket is not None and ticket.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(RateLimited) as refused:
            await lim.admit(key, "m", body(), False)
        return refused.value
    err = run(go())
    assert (err.status, err.code) == (429, "rate_limit_exceeded")
    assert err.headers["x-ratelimit-limit-requests"] == "1" and int(err.headers["Retry-After"]) >= 1
    assert "team" in err.message


def test_a_keys_model_limits_apply_per_model_on_top_of_its_own():
    key = ApiKey.model_validate({"key": "sk-models-000", "name": "team", "rpm": 10,
                                 "model_limits": {"gpt-*": {"rpm": 1}, "gpt-big": {"rpm": 2}}})

    async def go():
        lim = limiter()
        ticket = await lim.admit(key, "gpt-a", body(), False)
        assert ticket is not None and ticket.headers["x-ratelimit-limit-requests"] == "1"  # the tightest
        with pytest.raises(RateLimited) as refused:
            await lim.admit(key, "gpt-a", body(), False)
        assert await lim.admit(key, "gpt-b", body(), False) is not None  # per model, not per pattern
        assert await lim.admit(key, "gpt-big", body(), False) is not None  # its exact name wins
        assert await lim.admit(key, "gpt-big", body(), False) is not None
        assert await lim.admit(key, "llama", body(), False) is not None  # the key's own limit only
        return refused.value
    err = run(go())
    assert "for model 'gpt-a'" in err.message and "limit 1" in err.message


def test_over_the_budget_is_429_insufficient_quota_not_retried():
    key = ApiKey(key="sk-budget-0000", budget={"tokens": 1, "per": "month"})

    async def go():
        lim = limiter()
        ticket = await lim.admit(key, "m", body(), False)
        assert ticket is not None
        await ticket.finish(TokenUsage(1, 1), error=False)
        with pytest.raises(RateLimited) as refused:
            await lim.admit(key, "m", body(), False)
        return refused.value
    err = run(go())
    assert (err.type, err.code, err.headers["x-should-retry"]) == ("insufficient_quota", "insufficient_quota", "false")


def test_a_stream_without_include_usage_asks_for_it_and_strips_it():
    async def go():
        ticket = await limiter().admit(ApiKey(key="sk-stream-000", tpm=10), "m", body(stream=True), True)
        assert ticket is not None
        return ticket
    ticket = run(go())
    assert ticket.strip_usage and json.loads(ticket.body)["stream_options"] == {"include_usage": True}


def test_usage_is_added_up_per_key_model_and_hour():
    key = ApiKey(key="sk-usage-0000", name="team")

    async def go():
        lim = limiter()
        await lim.start()
        for usage, error in ((TokenUsage(2, 3), False), (TokenUsage(1, 1), False), (None, True)):
            ticket = await lim.admit(key, "m", body(), False)
            assert ticket is not None
            await ticket.finish(usage, error)
        rows = await lim.usage(0, 2**31, "team", None)
        await lim.close()
        return rows
    rows = run(go())
    assert [(r.key_name, r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.errors) for r in rows] == [
        ("team", "m", 3, 3, 4, 1)]


class DeadStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.dead = True

    async def admit(self, quota, window):
        if self.dead:
            raise RedisConnectionError("refused")
        return await super().admit(quota, window)

    async def ping(self) -> None:
        if self.dead:
            raise RedisConnectionError("refused")


def test_an_unreachable_store_fails_open_once_logged_then_limits_return(caplog):
    key = ApiKey(key="sk-outage-000", rpm=1)

    async def go():
        lim = limiter()
        lim.store = store = DeadStore()
        for _ in range(3):
            assert await lim.admit(key, "m", body(), False) is not None  # over the rpm, let through
        assert (lim.down, lim.outages, lim.unchecked) == (True, 1, 3)
        store.dead = False
        for _ in range(100):
            if not lim.down:
                break
            await asyncio.sleep(0.01)
        await lim.admit(key, "m", body(), False)
        with pytest.raises(RateLimited):
            await lim.admit(key, "m", body(), False)
        await lim.close()
    run(go())
    assert sum("Redis unreachable" in r.message for r in caplog.records) == 1


def test_fail_closed_answers_503():
    async def go():
        lim = limiter(fail_closed=True)
        lim.store = DeadStore()
        with pytest.raises(Unavailable) as err:
            await lim.admit(ApiKey(key="sk-closed-000", rpm=5), "m", body(), False)
        await lim.close()
        return err.value
    assert run(go()).code == "rate_limiter_unavailable"


# ---- keys ----------------------------------------------------------------------------------------

def test_watched_keys_join_the_configured_ones_which_win_a_clash():
    configured = ApiKey(key="sk-configured-0", name="conf")
    ring = KeyRing([configured], watched=True)
    watched = ApiKey(key_sha256=ApiKey(key="sk-watched-000").digest.hex(), name="kv", models=["gpt-*"])
    clash = ApiKey(key_sha256=configured.digest.hex(), name="impostor")
    ring.replace_watched([watched, clash])
    assert ring.authenticate("Bearer sk-watched-000") == watched
    assert ring.authenticate("Bearer sk-configured-0") is configured
    assert KeyRing.allows(watched, "gpt-4o") and not KeyRing.allows(watched, "llama")
    ring.replace_watched([])
    assert not KeyRing([], watched=True).open  # keys may come any moment: never open


def test_kv_entries_that_do_not_validate_or_hold_a_key_are_skipped():
    good = ApiKey(key_sha256="ab" * 32, name="good", rpm=3)
    entries = [{"Key": "p/good", "Value": entry_json(good)},
               {"Key": "p/bad", "Value": b'{"key_sha256": "nothex", "rpm": -1}'},
               {"Key": "p/plain", "Value": b'{"key": "sk-plain-secret-1"}'},
               {"Key": "p/", "Value": None},
               {"Key": "p/unnamed", "Value": json.dumps({"key_sha256": "cd" * 32}).encode()}]
    keys = parse_entries(entries, "p/")
    assert [k.name for k in keys] == ["good", "unnamed"] and keys[0].rpm == 3


def test_redis_url_from_the_environment_and_a_bad_budget_named(tmp_path):
    config = tmp_path / "env.yaml"
    message = config_error(config, "wrapper:\n  api_keys:\n    - {key: sk-0123456789, budget: {tokens: 5, per: week}}\n")
    assert "wrapper.api_keys.0.budget.per" in message and str(config) in message
    config.write_text("redis:\n  url: redis://elsewhere:6379/0\n")
    settings = load_settings(config, {"REDIS_URL": "redis://127.0.0.1:7000/1"})
    assert settings.redis.url is not None and settings.redis.url.get_secret_value() == "redis://127.0.0.1:7000/1"


# ---- the lean Redis client -----------------------------------------------------------------------

def test_resp_replies_are_read_as_redis_sends_them():
    from wrapper.resp import RespError, encode, read_reply

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(b"+PONG\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*3\r\n:1\r\n$1\r\nx\r\n*1\r\n:-7\r\n-NOSCRIPT no\r\n")
        reader.feed_eof()
        return [await read_reply(reader) for _ in range(6)]
    pong, number, text, nil, array, error = run(go())
    assert (pong, number, text, nil, array) == ("PONG", 42, b"abc", None, [1, b"x", [-7]])
    assert isinstance(error, RespError) and str(error) == "NOSCRIPT no"
    assert encode(("SET", "k", 1.5)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"


def test_resp_urls():
    from wrapper.resp import RespClient
    c = RespClient.from_url("redis://user:p%40ss@10.0.0.2:7000/3", 0.5)
    assert c is not None and (c.host, c.port, c.db, c.username, c.password) == ("10.0.0.2", 7000, 3, "user", "p@ss")
    assert RespClient.from_url("rediss://host:6380/0", 0.5) is None  # TLS: redis-py's


def test_a_silent_redis_times_out_and_the_next_call_connects_anew():
    from wrapper.resp import RespClient

    async def go():
        connections = []

        async def silent(reader, writer):
            connections.append(writer)
            await reader.read()  # reads, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient("127.0.0.1", port, timeout=0.1)
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await client.call("PING")
        await client.close()
        server.close()
        for writer in connections:
            writer.close()
        return len(connections)
    assert run(go()) == 2


def test_an_unreachable_redis_is_an_oserror():
    from tests.support.procs import free_port
    from wrapper.resp import RespClient

    async def go():
        client = RespClient("127.0.0.1", free_port(), timeout=1)
        with pytest.raises(OSError):
            await client.call("PING")
        await client.close()
    run(go())


def test_strict_mode_counts_keys_in_consul_kv_as_keys():
    from wrapper.cli import guards
    watched = Settings.model_validate({"wrapper": {"keys_consul_prefix": "oaw/keys/"}})
    assert guards(watched)[0].is_set
    assert not guards(Settings())[0].is_set
