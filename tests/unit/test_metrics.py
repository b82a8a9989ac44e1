"""The metrics' logic in-process: label bounds, rejection reasons, stream timing and usage, the table gauges."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response

from common import wire
from common.errors import InvalidRequest, RateLimited, Unauthorized, model_not_found
from common.http import ClientGone, SSEResponse
from common.metrics import Observation
from svc_mgr import Instance, RoutingTable
from wrapper.metrics import WrapperMetrics
from wrapper.observe import Observer

MODEL = "m1"
CHAT = "/v1/chat/completions"


def _table() -> RoutingTable:
    table = RoutingTable(cooldown=60)
    table.set_service("svc", [Instance("svc-a", "svc", "127.0.0.1", 9001, (MODEL,)),
                              Instance("svc-b", "svc", "127.0.0.1", 9002, (MODEL,))])
    return table


def _metrics(table: RoutingTable | None = None, heard: float | None = None) -> WrapperMetrics:
    return WrapperMetrics(table or _table(), lambda: heard, lambda: False)


def _samples(m: WrapperMetrics) -> dict[tuple[str, frozenset], float]:
    text = m.exposition.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _value(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_a_model_outside_the_table_is_counted_as_unknown():
    m = _metrics()
    for model in (MODEL, "made-up-by-a-client"):
        obs = m.begin(wire.Capability.CHAT)
        obs.admit(model, False)
        m.failed(obs, model_not_found(model))
    samples = _samples(m)
    assert _value(samples, "oaw_requests_total", model=MODEL, status="404") == 1
    assert _value(samples, "oaw_requests_total", model="unknown", status="404") == 1
    assert not any("made-up" in str(labels) for _, labels in samples)
    assert _value(samples, "oaw_rejections_total", reason="not_found") == 2


def test_rejection_reasons_by_what_failed():
    m = _metrics()
    for exc in (Unauthorized("no"), InvalidRequest("bad"), RateLimited("slow down")):
        m.failed(m.begin(wire.Capability.CHAT), exc)
    obs = m.begin(wire.Capability.CHAT)
    obs.admit(MODEL, False)
    m.responded(obs, Response(b"{}", status_code=429))  # a worker's 429 passed on: every instance busy
    samples = _samples(m)
    for reason in ("auth", "invalid_request", "rate_limit", "concurrency"):
        assert _value(samples, "oaw_rejections_total", reason=reason) == 1, reason
    assert _value(samples, "oaw_rejections_total", reason="body_size") == 0  # shown at 0 from the start
    assert _value(samples, "oaw_requests_in_flight", model=MODEL) == 0


def test_a_client_gone_is_a_disconnect_and_a_499():
    m = _metrics()
    obs = m.begin(wire.Capability.CHAT)
    obs.admit(MODEL, True)
    m.failed(obs, ClientGone())
    samples = _samples(m)
    assert _value(samples, "oaw_client_disconnects_total", model=MODEL) == 1
    assert _value(samples, "oaw_requests_total", status="499") == 1


def test_server_timing_and_overhead_exclude_the_worker():
    m = _metrics()
    obs = m.begin(wire.Capability.CHAT)
    obs.admit(MODEL, False)
    obs.start -= 0.210  # 10 ms in the wrapper before the request went to the worker...
    obs.admitted_at -= 0.200  # ...then 200 ms at the worker
    timing = m.answered(obs)
    assert timing is not None
    parts = dict(p.strip().split(";dur=") for p in timing.decode().split(","))
    assert 10 <= float(parts["gateway"]) < 60
    assert 200 <= float(parts["worker"]) < 250
    assert _value(_samples(m), "oaw_gateway_overhead_seconds_count") == 1


async def _events(n: int) -> AsyncGenerator[bytes, None]:
    for i in range(n):
        yield wire.sse_event({"choices": [{"delta": {"content": f"w{i}"}}]})
        await asyncio.sleep(0.001)
    yield wire.sse_event({"choices": [], "usage": wire.usage(3, n)}) + wire.DONE_EVENT


def _stream(m: WrapperMetrics, n: int) -> SSEResponse:
    """A stream of `n` events answered through the wrapper's Observer, as the app's route would."""
    observer = Observer(_table(), m)

    async def route(request: Request, capability: wire.Capability, obs: Observation | None) -> Response:
        observer.admitted(request, MODEL, True, obs)
        return SSEResponse(_events(n), on_close=lambda: None)

    handle = observer.observed(route, wire.Capability.CHAT)
    response = asyncio.run(handle(Request({"type": "http", "method": "POST", "path": CHAT, "headers": []})))
    assert isinstance(response, SSEResponse)
    return response


def test_a_stream_read_to_its_end_gives_one_ttft_its_usage_and_no_disconnect():
    m = _metrics()
    response = _stream(m, 5)

    async def drain() -> None:
        async for _ in response.chunks:
            pass
        assert response.on_close is not None
        response.on_close()

    asyncio.run(drain())
    samples = _samples(m)
    assert _value(samples, "oaw_time_to_first_token_seconds_count", model=MODEL) == 1
    assert _value(samples, "oaw_time_per_output_chunk_seconds_count", model=MODEL) == 1
    assert _value(samples, "oaw_output_tokens_total", model=MODEL) == 5
    assert _value(samples, "oaw_input_tokens_total", model=MODEL) == 3
    assert _value(samples, "oaw_client_disconnects_total") == 0
    assert _value(samples, "oaw_requests_in_flight", model=MODEL) == 0


def test_a_stream_closed_half_way_is_a_disconnect_counted_once():
    m = _metrics()
    response = _stream(m, 50)

    async def leave() -> None:
        chunks = response.chunks
        await anext(chunks)
        await chunks.aclose()  # what SSEResponse does when the client goes away
        assert response.on_close is not None
        response.on_close()
        response.on_close()

    asyncio.run(leave())
    samples = _samples(m)
    assert _value(samples, "oaw_client_disconnects_total", model=MODEL) == 1
    assert _value(samples, "oaw_requests_total", model=MODEL, status="200") == 1
    assert _value(samples, "oaw_output_tokens_total") == 0  # the usage chunk never came


def test_table_gauges_are_read_at_scrape_time():
    table = _table()
    m = _metrics(table, heard=time.monotonic() - 3)
    table.cool_down(table.instances(MODEL)[0])
    samples = _samples(m)
    assert _value(samples, "oaw_instances", model=MODEL) == 2
    assert _value(samples, "oaw_instances_cooling_down", model=MODEL) == 1
    assert 3 <= _value(samples, "oaw_discovery_last_heard_seconds") < 30
    assert _value(samples, "oaw_consul_up") == 1
    assert _value(_samples(_metrics(table, heard=None)), "oaw_consul_up") == 0  # never heard from Consul


def test_attempts_and_failovers_by_outcome():
    table = _table()
    m = _metrics(table)
    a, b = table.instances(MODEL)
    m.attempted(MODEL, a, "worker_unreachable")
    m.failover("worker_unreachable")
    m.attempted(MODEL, b, 429)
    m.failover(429)
    m.attempted(MODEL, a, "ok")
    samples = _samples(m)
    assert _value(samples, "oaw_upstream_attempts_total", worker="svc-a", outcome="worker_unreachable") == 1
    assert _value(samples, "oaw_upstream_attempts_total", worker="svc-b", outcome="busy") == 1
    assert _value(samples, "oaw_upstream_attempts_total", worker="svc-a", outcome="ok") == 1
    assert _value(samples, "oaw_failovers_total", reason="busy") == 1
    assert _value(samples, "oaw_failovers_total", reason="worker_unreachable") == 1


def test_a_workers_queue_length_is_read_at_scrape_time_and_its_429s_counted():
    from worker.metrics import WorkerMetrics

    waiting = [0]
    m = WorkerMetrics(lambda model: model == MODEL, lambda: waiting[0])
    waiting[0] = 3
    obs = m.begin(_FakeRequest(), wire.Capability.CHAT)
    m.failed(obs, RateLimited("busy"))
    text = m.exposition.render().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert _value(samples, "oaw_worker_queue_length") == 3
    assert _value(samples, "oaw_worker_concurrency_rejections_total") == 1
    assert _value(samples, "oaw_worker_requests_total", model="unknown", status="429") == 1


class _FakeRequest:
    """What WorkerMetrics.begin touches of a request: its ASGI scope."""

    def __init__(self) -> None:
        self.scope: dict = {}


def test_server_timing_off_still_observes_the_overhead():
    m = WrapperMetrics(_table(), lambda: None, lambda: False, server_timing=False)
    obs = m.begin(wire.Capability.CHAT)
    obs.admit(MODEL, False)
    assert m.answered(obs) is None
    assert _value(_samples(m), "oaw_gateway_overhead_seconds_count") == 1


def test_attempt_series_of_workers_gone_from_the_table_are_dropped_once_the_series_double(monkeypatch):
    import wrapper.metrics as wm

    monkeypatch.setattr(wm, "ATTEMPT_SERIES_SWEEP_MIN", 3)
    table = _table()
    m = WrapperMetrics(table, lambda: None, lambda: False)
    a, b = table.routed("svc")["svc-a"], table.routed("svc")["svc-b"]
    m.attempted(MODEL, a, "ok")
    m.attempted(MODEL, a, 429)
    m.attempted(MODEL, b, "ok")
    table.set_service("svc", [b])  # svc-a leaves (deregistered, or its check failed)
    m.attempted(MODEL, b, "ok")  # an existing series: no look for gone workers
    assert _value(_samples(m), "oaw_upstream_attempts_total", worker="svc-a") == 2
    m.attempted(MODEL, b, 503)  # a new series with three kept: the look happens, before it is made
    samples = _samples(m)
    assert not [labels for (name, labels) in samples if name == "oaw_upstream_attempts_total"
                and ("worker", "svc-a") in labels]
    assert _value(samples, "oaw_upstream_attempts_total", worker="svc-b", outcome="ok") == 2
    assert _value(samples, "oaw_upstream_attempts_total", worker="svc-b", outcome="unavailable") == 1
    m.attempted(MODEL, a, "ok")  # a worker that comes back starts again from 0
    assert _value(_samples(m), "oaw_upstream_attempts_total", worker="svc-a") == 1


def test_the_fast_updates_expose_what_the_librarys_own_methods_do():
    """common/metrics.adder and observer update prometheus-client's value stores directly: the exposition
    must be the one the public inc/dec/observe give, bucket edges included."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from common.metrics import adder, observer

    def build() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
        registry = CollectorRegistry()
        return (registry, Counter("c_total", "c", ["m"], registry=registry),
                Gauge("g", "g", ["m"], registry=registry),
                Histogram("h_seconds", "h", ["m"], buckets=(0.001, 0.01, 0.1), registry=registry))

    amounts = (0.0, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 7.0)
    slow, c1, g1, h1 = build()
    for a in amounts:
        c1.labels("x").inc(3)
        g1.labels("x").inc(1)
        g1.labels("x").dec(1)
        h1.labels("x").observe(a)
    fast, c2, g2, h2 = build()
    count, gauge, observe = adder(c2.labels("x")), adder(g2.labels("x")), observer(h2.labels("x"))
    for a in amounts:
        count(3)
        gauge(1)
        gauge(-1)
        observe(a)
    assert generate_latest(fast) == generate_latest(slow)


def test_the_fast_updates_fall_back_to_the_public_methods():
    from common.metrics import adder, observer

    class Child:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float]] = []

        def inc(self, amount: float = 1) -> None:
            self.calls.append(("inc", amount))

        def observe(self, amount: float) -> None:
            self.calls.append(("observe", amount))

    child = Child()
    adder(child)(2)  # type: ignore[arg-type]
    observer(child)(0.5)  # type: ignore[arg-type]
    assert child.calls == [("inc", 2), ("observe", 0.5)]
