"""The wrapper's Prometheus metrics (docs/observability.md lists them): the request series of
common/metrics.py named `oaw_*`, plus the hop's attempts and failovers, rejections, client disconnects,
the gateway's own overhead (also sent per request as a `Server-Timing` header), and what the routing
table and discovery hold, read at scrape time (nothing per request)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from common.errors import OpenAIError
from common.http import CLIENT_CLOSED, ClientGone, SSEResponse
from common.metrics import (
    OVERHEAD_BUCKETS,
    PREFIX,
    Add,
    Exposition,
    Observation,
    RequestMetrics,
    adder,
    observer,
    preset,
)
from common.wire import PATHS, Capability
from svc_mgr import Instance, RoutingTable
from svc_mgr.affinity import Affinity

REJECTION_REASONS = ("auth", "not_found", "body_size", "concurrency", "rate_limit", "invalid_request")
_REJECTED_BY_WRAPPER = {401: "auth", 403: "auth", 404: "not_found", 413: "body_size", 429: "rate_limit"}
# what an attempt that was refused by its answer's status is counted as
_REFUSED = {429: "busy", 502: "bad_gateway", 503: "unavailable", 404: "stale"}
SERVER_TIMING = b"server-timing"
# attempt series kept before those of workers gone from the routing table are looked for and dropped
ATTEMPT_SERIES_SWEEP_MIN = 1024


def endpoint_label(capability: Capability) -> str:
    return PATHS[capability]


class WrapperMetrics:
    """Made once per process at start-up. `heard_at()`: monotonic time Consul last answered (None: never);
    `consul_down()`: whether the last query failed."""

    def __init__(self, table: RoutingTable, heard_at: Callable[[], float | None], consul_down: Callable[[], bool],
                 server_timing: bool = True) -> None:
        self.exposition = Exposition()
        registry = self.exposition.registry
        self.server_timing = server_timing
        self.requests = RequestMetrics(PREFIX, registry, table.known_models.__contains__, "wrapper")
        self.attempts = Counter(f"{PREFIX}upstream_attempts_total", "Attempts at a worker, by model, worker "
                                "(Consul service id) and outcome", ["model", "worker", "outcome"], registry=registry)
        self.failovers = Counter(f"{PREFIX}failovers_total", "Requests tried again (on another instance if "
                                 "there is one), by what failed the attempt before", ["reason"], registry=registry)
        self.rejections = Counter(f"{PREFIX}rejections_total", "Requests refused before a worker answered them "
                                  "(concurrency: every instance was busy, 429)", ["reason"], registry=registry)
        preset(self.rejections, REJECTION_REASONS)
        self.disconnects = Counter(f"{PREFIX}client_disconnects_total", "Clients that went away before their "
                                   "answer ended", ["model"], registry=registry)
        self.overhead = Histogram(f"{PREFIX}gateway_overhead_seconds", "Time a request spent in the wrapper "
                                  "itself, excluding the wait for workers (streams: up to the worker's headers)",
                                  buckets=OVERHEAD_BUCKETS, registry=registry)
        self._observe_overhead = observer(self.overhead)
        self.table = table
        self._attempts: dict[tuple[str, str, str | int], Add] = {}
        self._service_of: dict[str, str] = {}  # worker id -> its service, for each worker with attempt series
        self._sweep_at = ATTEMPT_SERIES_SWEEP_MIN
        self._failovers: dict[str | int, Counter] = {}
        self.exposition.add_live(TableCollector(table, heard_at, consul_down))

    # ---- the request path ------------------------------------------------------------------------

    def begin(self, capability: Capability) -> Observation:
        return self.requests.begin(endpoint_label(capability))

    def answered(self, obs: Observation) -> bytes | None:
        """The worker's answer (its headers, a JSON answer whole) is in: the gateway's overhead so far,
        observed, and the `Server-Timing` header's value if configured (bytes, appended to the response's
        raw headers: a header through Starlette's dict costs twice as much)."""
        now = time.perf_counter()
        worker = now - obs.admitted_at
        gateway = now - obs.start - worker
        self._observe_overhead(gateway)
        if self.server_timing:
            return b"gateway;dur=%.3f, worker;dur=%.3f" % (gateway * 1000, worker * 1000)
        return None

    def responded(self, obs: Observation, response: Response) -> None:
        """The app's answer; a stream's is counted when it closes (`stream_closed`)."""
        status = response.status_code
        if status == 429:
            self.rejections.labels("concurrency").inc()
        if status == CLIENT_CLOSED:
            self._disconnected(obs)
        if not isinstance(response, SSEResponse):
            self.requests.finish_json(obs, response)

    def stream_closed(self, obs: Observation, status: int) -> None:
        """A stream's response closed (its chunks went through `obs.saw`): counted, once."""
        if not obs.finished:
            self.requests.finish(obs, status)
            if obs.disconnected:
                self._disconnected(obs)

    def failed(self, obs: Observation, exc: BaseException) -> None:
        if isinstance(exc, ClientGone):
            self._disconnected(obs)
            self.requests.finish(obs, CLIENT_CLOSED)
            return
        status = exc.status if isinstance(exc, OpenAIError) else exc.status_code if isinstance(
            exc, HTTPException) else 500 if isinstance(exc, Exception) else CLIENT_CLOSED
        if 400 <= status < 500:
            self.rejections.labels(_REJECTED_BY_WRAPPER.get(status, "invalid_request")).inc()
        self.requests.finish(obs, status)

    def _disconnected(self, obs: Observation) -> None:
        self.disconnects.labels(obs.model).inc()

    # ---- the hop (wrapper/hop.py's AttemptObserver) ----------------------------------------------

    def attempted(self, model: str, instance: Instance, outcome: str | int) -> None:
        """`outcome`: "ok", the error code of a failed attempt, or the status that refused it."""
        key = (model, instance.id, outcome)
        child = self._attempts.get(key)
        if child is None:
            if len(self._attempts) >= self._sweep_at:
                self._forget_gone_workers()
            child = self._attempts[key] = adder(self.attempts.labels(model, instance.id, _outcome_label(outcome)))
            self._service_of[instance.id] = instance.service
        child(1)

    def _forget_gone_workers(self) -> None:
        """Drop the attempt series of workers no longer in the routing table, as Prometheus clients do for
        targets that went away: workers that come and go (autoscaling, new ports, new hosts) would otherwise
        grow /metrics and the wrapper's memory for good (0.7 KiB a series). Looked for only when the series
        doubled since the last look, so the request path pays O(1) amortized. A worker that returns starts
        from 0, which rate() reads as a counter reset. (With --processes, prometheus-client's multiprocess
        files keep what a process counted; this frees the process's own objects.)"""
        gone = {worker for worker, service in self._service_of.items() if worker not in self.table.routed(service)}
        for key in [key for key in self._attempts if key[1] in gone]:
            model, worker, outcome = key
            self.attempts.remove(model, worker, _outcome_label(outcome))
            del self._attempts[key]
        for worker in gone:
            del self._service_of[worker]
        self._sweep_at = max(ATTEMPT_SERIES_SWEEP_MIN, 2 * len(self._attempts))

    def failover(self, reason: str | int) -> None:
        child = self._failovers.get(reason)
        if child is None:
            child = self._failovers[reason] = self.failovers.labels(_outcome_label(reason))
        child.inc()

    async def endpoint(self, request: Request) -> Response:
        return await self.exposition.endpoint(request)


def _outcome_label(outcome: str | int) -> str:
    """An attempt's outcome as a label: a refusing answer's status by its name (`_REFUSED`)."""
    return _REFUSED.get(outcome, str(outcome)) if isinstance(outcome, int) else outcome


class TableCollector(Collector):
    """Gauges read from this process's routing table and discovery when /metrics is scraped."""

    def __init__(self, table: RoutingTable, heard_at: Callable[[], float | None], consul_down: Callable[[], bool]) -> None:
        self.table = table
        self.heard_at = heard_at
        self.consul_down = consul_down

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(f"{PREFIX}instances", "Healthy instances in the routing table, by model",
                                      labels=["model"])
        cooling = GaugeMetricFamily(f"{PREFIX}instances_cooling_down", "Instances skipped for now after a "
                                    "failure (wrapper.cooldown), by model", labels=["model"])
        now = time.monotonic()
        for model in self.table.models():
            found = self.table.instances(model)
            instances.add_metric([model], len(found))
            cooling.add_metric([model], sum(1 for inst in found if inst.cooled_until > now))
        yield instances
        yield cooling
        heard = self.heard_at()
        yield GaugeMetricFamily(f"{PREFIX}discovery_last_heard_seconds", "Seconds since Consul last answered "
                                "the routing table's queries (a blocking query returns at least every "
                                "wrapper.consul_wait)", value=now - heard if heard is not None else float("inf"))
        yield GaugeMetricFamily(f"{PREFIX}consul_up", "Whether Consul answered the last query (1) or not (0)",
                                value=0 if self.consul_down() or heard is None else 1)
        yield from affinity_metrics(self.table.affinity)


def affinity_metrics(affinity: Affinity | None) -> Iterator[Metric]:
    """The affinity balancer's picks by outcome and its remembered keys (nothing without that balancer)."""
    if affinity is None:
        return
    picks = CounterMetricFamily(f"{PREFIX}affinity_picks", "Picks of the affinity balancer, by outcome: kept (the "
                                "key's remembered instance took it), placed (a new key), moved (its remembered "
                                "instance was over the load bound, cooling down or had failed)", labels=["outcome"])
    for outcome, count in (("kept", affinity.kept), ("placed", affinity.placed), ("moved", affinity.moved)):
        picks.add_metric([outcome], count)
    yield picks
    yield GaugeMetricFamily(f"{PREFIX}affinity_keys", "Keys whose last instance the affinity balancer remembers "
                            "(wrapper.affinity.max_keys at most)", value=len(affinity))
