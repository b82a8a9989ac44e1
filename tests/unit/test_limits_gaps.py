"""Issue #12's last parts in process: the per-key counters of /metrics, the limiter's outage counters, the
status page's usage table and the wrapper's Consul registration when Consul is not there."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from common.errors import Unavailable
from common.settings import ApiKey, Settings, load_settings
from tests.support.config import config_error
from tests.support.procs import free_port
from wrapper.app import Wrapper
from wrapper.counters import MemoryStore, Settlement
from wrapper.gateway import GatewayRegistration, advertised
from wrapper.key_metrics import UNNAMED, KeyMetrics
from wrapper.limits import Limiter
from wrapper.status_usage import render_usage, usage_table

KNOWN = {"m", "n"}


def metrics() -> tuple[KeyMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return KeyMetrics(registry, KNOWN.__contains__), registry


def sample(registry: CollectorRegistry, name: str, key_name: str, model: str) -> float:
    return registry.get_sample_value(name, {"key_name": key_name, "model": model}) or 0.0


def settlement(key_name: str = "alice", model: str = "m", prompt: int = 3, completion: int = 4,
               error: bool = False, named: bool = True) -> Settlement:
    return Settlement((), None, prompt + completion, prompt, completion, error, key_name, model, 0, named)


def test_counts_by_key_name_and_model():
    m, registry = metrics()
    m.count(settlement())
    m.count(settlement(prompt=5, completion=0, error=True))
    assert sample(registry, "oaw_key_requests_total", "alice", "m") == 2
    assert sample(registry, "oaw_key_prompt_tokens_total", "alice", "m") == 8
    assert sample(registry, "oaw_key_completion_tokens_total", "alice", "m") == 4
    assert sample(registry, "oaw_key_errors_total", "alice", "m") == 1


def test_a_nameless_key_is_unnamed_and_an_unknown_model_is_unknown():
    m, registry = metrics()
    m.count(settlement(key_name="key-1a2b3c4d", named=False, model="invented-by-a-client"))
    assert sample(registry, "oaw_key_requests_total", UNNAMED, "unknown") == 1
    assert not any("key-1a2b3c4d" in str(s.labels) or "invented" in str(s.labels)
                   for family in registry.collect() for s in family.samples)


def limiter() -> tuple[Limiter, CollectorRegistry]:
    lim = Limiter(Settings.model_validate({"redis": {"retry_interval": 60}}))
    lim.metrics, registry = metrics()
    return lim, registry


class DeadStore(MemoryStore):
    async def admit(self, quota, window):
        raise RedisConnectionError("refused")


def test_the_limiter_counts_a_keys_requests_once_and_its_outages_and_unchecked_requests():
    key = ApiKey(key="sk-gaps-unit-000", name="team", rpm=10)
    body = json.dumps({"model": "m", "messages": []}).encode()

    async def go() -> CollectorRegistry:
        lim, registry = limiter()
        ticket = await lim.admit(key, "m", body, False)
        assert ticket is not None
        await ticket.finish(None, error=False)
        await ticket.finish(None, error=False)  # once, however the answer ends
        assert await lim.admit(None, "m", body, False) is None  # no key: nothing counted
        lim.store = DeadStore()
        for _ in range(3):
            await lim.admit(key, "m", body, False)
        await lim.close()
        return registry

    registry = asyncio.run(go())
    assert sample(registry, "oaw_key_requests_total", "team", "m") == 1
    assert registry.get_sample_value("oaw_rate_limiter_outages_total") == 1
    assert registry.get_sample_value("oaw_rate_limiter_unchecked_total") == 3


def test_the_usage_table_sums_the_hours_per_key_and_model():
    async def go() -> dict:
        lim = Limiter(Settings())
        hour = int(time.time()) // 3600 * 3600
        for h, n in ((hour, 1), (hour - 3600, 2), (hour - 7200, 100)):  # the third is before the table's hours
            await lim.record(Settlement((), None, 0, 10 * n, n, False, "alice", "m", h))
        await lim.record(Settlement((), None, 0, 1, 1, True, "bob", "m", hour))
        table = await usage_table(lim)
        await lim.close()
        return table

    table = asyncio.run(go())
    assert table["store"] == "memory" and table["rows"] == [
        {"key_name": "alice", "model": "m", "requests": 2, "prompt_tokens": 30, "completion_tokens": 3,
         "total_tokens": 33, "errors": 0},
        {"key_name": "bob", "model": "m", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1,
         "total_tokens": 2, "errors": 1}]


def test_the_usage_table_says_so_when_the_store_is_down():
    class Down(Limiter):
        async def usage(self, start, end, key_name, model):
            raise Unavailable("The usage store is unavailable; try again shortly.")

    table = asyncio.run(usage_table(Down(Settings())))
    assert table["rows"] == [] and "unavailable" in table["error"]
    assert "unavailable" in render_usage(table)


def test_the_usage_section_escapes_names_and_is_absent_for_an_open_wrapper():
    row = {"key_name": "<script>x</script>", "model": "m", "requests": 1, "prompt_tokens": 2,
           "completion_tokens": 3, "total_tokens": 5, "errors": 0}
    page = render_usage({"since": "2026-11-26T07:00:00+00:00", "store": "memory", "rows": [row]})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert render_usage(None) == ""


def test_a_wildcard_address_is_registered_as_loopback():
    assert advertised("0.0.0.0") == advertised("::") == "127.0.0.1"
    assert advertised("10.1.2.3") == "10.1.2.3"


def test_an_unreachable_consul_only_logs_once_and_stops_cleanly(caplog):
    settings = Settings.model_validate({"consul": {"host": "127.0.0.1", "port": free_port()}})

    async def go() -> bool:
        gateway = GatewayRegistration(settings, "gw", "0.0.0.0", 8000)
        gateway.start()
        await asyncio.sleep(1.5)  # two attempts
        await asyncio.wait_for(gateway.stop(), 5)
        return gateway.registered

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(go()) is False
    assert sum("could not register the wrapper as gw-127.0.0.1-8000" in r.message for r in caplog.records) == 1


def test_a_bad_gateway_service_is_named_with_its_file_and_null_registers_nothing(tmp_path):
    config = tmp_path / "env.yaml"
    message = config_error(config, "wrapper:\n  gateway_service: 'not a name'\n")
    assert "wrapper.gateway_service" in message and str(config) in message
    assert Wrapper(Settings(), ("127.0.0.1", 8000)).gateway is not None
    assert Wrapper(Settings(), None).gateway is None  # a --processes N wrapper's spawned processes
    config.write_text("wrapper:\n  gateway_service: null\n")
    assert Wrapper(load_settings(config), ("127.0.0.1", 8000)).gateway is None
