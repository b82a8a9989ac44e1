"""Prometheus metrics both apps keep (prometheus-client): the per-request series (requests, duration,
time to first token, time per chunk, tokens, in flight), the `/metrics` exposition, and prometheus-client's
multiprocess mode for a wrapper serving one port from several processes.

Cheap on the request path: one `Observation` per request; label children are bound once per model (or
per model/endpoint/status) and kept, so a request costs a few dict lookups and counter updates."""
from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .usage import StreamUsage, TokenUsage, from_json_answer
from .wire import sse_comments_only

PREFIX = "oaw_"  # every metric of the project starts with it
UNKNOWN = "unknown"  # the model label of anything not in the routing table (or not served by the worker)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM-sized: a cached embedding takes milliseconds, a long generation minutes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                   300.0, 600.0)
CHUNK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


# ---- several processes -----------------------------------------------------------------------------

def use_multiprocess_dir(path: str) -> None:
    """Keep this process's metric values in files under `path`, which every process serving the port shares,
    so any of them shows the sum. Must run before the first metric is made (prometheus-client decides the
    value store then); child processes inherit the variable."""
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()


class _OneThreadValue(values.MutexValue):
    """prometheus-client's value without its lock, for a process whose metrics one thread alone makes,
    updates and reads (the wrapper's event loop): the lock was a fifth of each counter update."""

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return self._value


def use_one_thread_values() -> None:
    """Metrics made from now on in this process are updated without a lock; call it only where one thread
    touches them. In multiprocess mode (values in shared files) it changes nothing."""
    if not multiprocess():
        values.ValueClass = _OneThreadValue


def multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


# ---- the request path's updates ---------------------------------------------------------------------

Add = Callable[[float], None]


def adder(child: Counter | Gauge) -> Add:
    """`child`'s value store's own `inc` (negative amounts for a gauge going down): what `child.inc()` ends in,
    without the checks before it (a labelled child, a non-negative amount, an exemplar), which hold here by
    construction and were half of each update. The store is prometheus-client's (`values.ValueClass`: a
    file in multiprocess mode), so the exposition is the library's as before. Falls back to the public
    methods if a release keeps it elsewhere."""
    value = getattr(child, "_value", None)
    if value is None or not callable(getattr(value, "inc", None)):
        return child.inc if isinstance(child, Counter) else lambda amount: child.inc(amount)
    return value.inc


def observer(child: Histogram) -> Add:
    """`child.observe` as the library does it (the sum, then the first bucket whose bound is not below the
    amount), found by bisection and updating the value stores directly: a third of the library's call.
    Falls back to `child.observe` if a release keeps them elsewhere."""
    bounds, buckets, total = (getattr(child, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if not (isinstance(bounds, list) and isinstance(buckets, list) and len(bounds) == len(buckets) and total is not None
            and all(callable(getattr(v, "inc", None)) for v in (total, *buckets))):
        return child.observe
    to_bucket = [bucket.inc for bucket in buckets]
    add_to_sum = total.inc
    search = bisect.bisect_left

    def observe(amount: float) -> None:
        add_to_sum(amount)
        to_bucket[search(bounds, amount)](1)
    return observe


class Exposition:
    """What `GET /metrics` shows: this app's metrics (summed over processes in multiprocess mode) and
    collectors read at scrape time from this process's own state."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `*_created` twin of every series: half the scrape, nobody reads it
        self.registry = CollectorRegistry()
        self._live: list[Collector] = []

    def add_live(self, collector: Collector) -> None:
        self._live.append(collector)
        if not multiprocess():
            self.registry.register(collector)

    def render(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in self._live:
            registry.register(collector)
        return generate_latest(registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(self.render(), media_type=CONTENT_TYPE)


# ---- per request ---------------------------------------------------------------------------------

class Observation:
    """One request as the metrics see it: started when it arrives, admitted once its model is known,
    finished once (a stream's when its response closes)."""

    __slots__ = ("metrics", "endpoint", "start", "admitted_at", "model", "stream", "first", "last", "chunks",
                 "usage", "finished", "disconnected")

    def __init__(self, metrics: RequestMetrics, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.start = time.perf_counter()
        self.admitted_at = 0.0
        self.model = UNKNOWN
        self.stream = False
        self.first = 0.0  # when the first chunk with an event was relayed
        self.last = 0.0
        self.chunks = 0
        self.usage: TokenUsage | None = None
        self.finished = False
        self.disconnected = False

    def admit(self, model: str, stream: bool) -> None:
        self.admitted_at = time.perf_counter()
        self.model = self.metrics.label(model)
        self.stream = stream
        self.metrics.series(self.model).in_flight(1)

    def saw(self, chunk: bytes, usage: StreamUsage) -> None:
        """A relayed chunk with events in it (not only keep-alive comments): timed, and its usage read."""
        self.last = time.perf_counter()
        if not self.first:
            self.first = self.last
        self.chunks += chunk.count(b"\n\n")  # events: a read may carry several
        usage.feed(chunk)


class _ModelSeries:
    """One model's label children, bound once."""

    __slots__ = ("in_flight", "input_tokens", "output_tokens", "ttft", "per_chunk")

    def __init__(self, metrics: RequestMetrics, model: str) -> None:
        self.in_flight = adder(metrics.in_flight_gauge.labels(model))
        self.input_tokens = adder(metrics.input_tokens.labels(model))
        self.output_tokens = adder(metrics.output_tokens.labels(model))
        self.ttft = observer(metrics.ttft.labels(model))
        self.per_chunk = observer(metrics.per_chunk.labels(model))


class RequestMetrics:
    """The request series of one app, all named `prefix` + ...; `known(model)` says whether a model may
    be a label value (else it is counted as `unknown`)."""

    def __init__(self, prefix: str, registry: CollectorRegistry, known: Callable[[str], bool], what: str) -> None:
        self.known = known
        self.requests = Counter(f"{prefix}requests_total", f"Requests the {what} answered, by model, endpoint "
                                "and HTTP status", ["model", "endpoint", "status"], registry=registry)
        self.duration = Histogram(f"{prefix}request_duration_seconds", f"Time from a request's arrival at the "
                                  f"{what} to the end of its answer", ["model", "endpoint", "stream"],
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram(f"{prefix}time_to_first_token_seconds", "Time from a streamed request's arrival "
                              "to its first event", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.per_chunk = Histogram(f"{prefix}time_per_output_chunk_seconds", "Mean time between two events of "
                                   "one stream (first to last), once per stream", ["model"], buckets=CHUNK_BUCKETS,
                                   registry=registry)
        self.input_tokens = Counter(f"{prefix}input_tokens_total", "Prompt tokens of the answers, from their "
                                    "usage", ["model"], registry=registry)
        self.output_tokens = Counter(f"{prefix}output_tokens_total", "Completion tokens of the answers, from "
                                     "their usage", ["model"], registry=registry)
        self.in_flight_gauge = Gauge(f"{prefix}requests_in_flight", f"Requests the {what} is serving, by model",
                                     ["model"], multiprocess_mode="livesum", registry=registry)
        self._series: dict[str, _ModelSeries] = {}
        self._count: dict[tuple[str, str, int], Add] = {}
        self._duration: dict[tuple[str, str, bool], Add] = {}

    def label(self, model: str) -> str:
        return model if self.known(model) else UNKNOWN

    def series(self, model: str) -> _ModelSeries:
        found = self._series.get(model)
        if found is None:
            found = self._series[model] = _ModelSeries(self, model)
        return found

    def begin(self, endpoint: str) -> Observation:
        return Observation(self, endpoint)

    def finish(self, obs: Observation, status: int) -> None:
        """Count a finished request, once."""
        if obs.finished:
            return
        obs.finished = True
        model, now = obs.model, time.perf_counter()
        series = self.series(model)
        if obs.admitted_at:
            series.in_flight(-1)
        key = (model, obs.endpoint, status)
        count = self._count.get(key)
        if count is None:
            count = self._count[key] = adder(self.requests.labels(model, obs.endpoint, str(status)))
        count(1)
        dkey = (model, obs.endpoint, obs.stream)
        duration = self._duration.get(dkey)
        if duration is None:
            duration = self._duration[dkey] = observer(
                self.duration.labels(model, obs.endpoint, "true" if obs.stream else "false"))
        duration(now - obs.start)
        if obs.first:
            series.ttft(obs.first - obs.start)
            if obs.chunks > 1:
                series.per_chunk((obs.last - obs.first) / (obs.chunks - 1))
        if obs.usage is not None:
            series.input_tokens(obs.usage.prompt_tokens)
            series.output_tokens(obs.usage.completion_tokens)

    def finish_json(self, obs: Observation, response: Response) -> None:
        if response.status_code == 200:
            obs.usage = from_json_answer(bytes(response.body))
        self.finish(obs, response.status_code)

    async def relay(self, obs: Observation, chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """`chunks` passed on, timing the events and reading the usage as they go by."""
        usage = StreamUsage()
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if chunk and not sse_comments_only(chunk):
                        obs.saw(chunk, usage)
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            obs.disconnected = True  # stopped before its end: the client went away
            raise
        finally:
            obs.usage = usage.usage

    def closing(self, obs: Observation, status: int, inner: Callable[[], None] | None,
                then: Callable[[Observation], None] | None = None) -> Callable[[], None]:
        """A stream response's on_close: its own first, then the count."""

        def close() -> None:
            try:
                if inner is not None:
                    inner()
            finally:
                if not obs.finished:  # once, however often it is called
                    self.finish(obs, status)
                    if then is not None:
                        then(obs)

        return close


def preset(counter: Counter, values_: Iterable[str]) -> None:
    """Show these label values at 0 from the start, so dashboards and alerts see the series before the
    first event."""
    for value in values_:
        counter.labels(value)
