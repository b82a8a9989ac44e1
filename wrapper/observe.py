"""Around each model request of the wrapper, in one place: its metrics (wrapper/metrics.py, when on), its
trace (taken from the client or started, passed to the worker, echoed), the status page's recent figures
(wrapper/recent.py), spans when exporting, and a DEBUG line with its outcome. A stream's chunks pass one
generator for all of them. Per request: a few ids, a context variable, a few dict reads — no I/O."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import Response

from common import tracing, wire
from common.http import SSEResponse, handle_error, request_id
from common.metrics import Observation
from common.tracing import Exporter, Trace
from common.usage import StreamUsage
from common.wire import Capability
from svc_mgr import Instance, RoutingTable

from .metrics import WrapperMetrics
from .recent import Recent

log = logging.getLogger(__name__)

MODEL_KEY = "observed_model"  # in the ASGI scope: the model a request was admitted for, if recorded
TRACEPARENT = tracing.TRACEPARENT.encode()

# what the observer wraps: the wrapper's handling of one request, given its metrics record (None: metrics off)
Route = Callable[[Request, Capability, Observation | None], Awaitable[Response]]


class Observer:
    def __init__(self, table: RoutingTable, metrics: WrapperMetrics | None, exporter: Exporter | None = None) -> None:
        self.table = table
        self.metrics = metrics
        self.exporter = exporter
        self.recent = Recent()

    def endpoints(self, route: Route, capabilities: Iterable[Capability]) -> dict[str, Callable]:
        """path -> observed endpoint, for each capability's path."""
        return {wire.PATHS[c]: self.observed(route, c) for c in capabilities}

    # ---- called by the request path --------------------------------------------------------------

    def admitted(self, request: Request, model: str, stream: bool, obs: Observation | None) -> None:
        """The body named `model` (Wrapper._route, after its checks). Only models the routing table has
        seen are counted, so a client cannot grow the recorder with made-up names."""
        if obs is not None:
            obs.admit(model, stream)
        tracing.note_model(model)
        if model in self.table.known_models:
            request.scope[MODEL_KEY] = model
            self.recent.admitted(model)

    def attempt_headers(self, instance: Instance) -> dict[str, str]:
        """The trace headers for one attempt at `instance` (Hop): the worker's parent is the wrapper's
        request span, or, when exporting, this attempt's own span (an earlier attempt failed over)."""
        trace = tracing.current()
        if trace is None:
            return {}
        trace.instance = instance.id
        if trace.span is None or self.exporter is None:
            return trace.headers()
        from opentelemetry.trace import Status, StatusCode

        for earlier in trace.attempts:
            if earlier.is_recording():
                earlier.set_status(Status(StatusCode.ERROR, "failed over"))
                earlier.end()
        span = self.exporter.start_span(trace, f"attempt {instance.id}", "CLIENT", trace.span_id, {
            "server.address": instance.address, "server.port": instance.port,
            "openai_api_wrapper.instance": instance.id, "openai_api_wrapper.service": instance.service,
            tracing.REQUEST_MODEL: trace.model or ""})
        trace.attempts.append(span)
        return trace.headers(tracing.span_id_of(span))

    # ---- the wrapper around the route ------------------------------------------------------------

    def observed(self, route: Route, capability: Capability) -> Callable[[Request], Awaitable[Response]]:
        operation = tracing.OPERATIONS.get(capability, capability)
        exporter = self.exporter
        metrics = self.metrics

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            trace = tracing.begin(exporter, request.scope["headers"], request_id(request), operation, operation)
            obs = metrics.begin(capability) if metrics is not None else None
            try:
                response = await route(request, capability, obs)
            except Exception as exc:  # answered here, not by DirectRoutes, so the error carries traceparent too
                if metrics is not None and obs is not None:
                    metrics.failed(obs, exc)
                response = await handle_error(request, exc)
            except BaseException as exc:  # cancelled: the client went away
                if metrics is not None and obs is not None:
                    metrics.failed(obs, exc)
                raise
            else:
                if metrics is not None and obs is not None:
                    metrics.responded(obs, response)
            response.raw_headers.append((TRACEPARENT, trace.traceparent().encode()))
            model = request.scope.get(MODEL_KEY)
            if isinstance(response, SSEResponse):  # a stream ends later: count it then
                response.chunks = self._relayed(response.chunks, obs, trace, model, started)
                response.on_close = self._on_close(response.on_close, obs, trace, model, response.status_code,
                                                   started)
            else:
                summary = wire.answer_summary(bytes(response.body)) if trace.span is not None else None
                self._finish(trace, model, response.status_code, started, summary)
            return response

        return handle

    def _finish(self, trace: Trace, model: str | None, status: int, started: float,
                summary: wire.AnswerSummary | None) -> None:
        if model is not None:
            self.recent.finished(model, status)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: %s -> %s %d in %.3f s", trace.request_id, trace.model, trace.instance, status,
                      time.perf_counter() - started, extra={"status": status,
                                                           "duration": round(time.perf_counter() - started, 6)})
        tracing.end(trace, status, summary)

    def _on_close(self, then: Callable[[], None] | None, obs: Observation | None, trace: Trace, model: str | None,
                  status: int, started: float) -> Callable[[], None]:
        def on_close() -> None:
            try:
                if then is not None:
                    then()
            finally:
                if self.metrics is not None and obs is not None:
                    self.metrics.stream_closed(obs, status)
                # a stream that failed after its 200 counts as the 502 its error event reports
                self._finish(trace, model, 502 if trace.failed_midway else status, started, trace.summary)
        return on_close

    async def _relayed(self, chunks: AsyncGenerator[bytes, None], obs: Observation | None, trace: Trace,
                       model: str | None, started: float) -> AsyncGenerator[bytes, None]:
        """The stream as it comes, noting when its first event (not a keep-alive comment) passes — the time
        to first token — and, for the metrics, each event's time and the usage; and whether it ended with
        an error event (Hop.stream's, or the worker's)."""
        if trace.span is not None:
            chunks = tracing.summarising(chunks, trace)
        usage = StreamUsage()
        first_seen = model is None
        last = b""
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if chunk and not wire.sse_comments_only(chunk):
                        if obs is not None:
                            obs.saw(chunk, usage)
                        if not first_seen:
                            first_seen = True
                            self.recent.first_token(model, time.perf_counter() - started)  # type: ignore[arg-type]
                    last = chunk
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            if obs is not None:
                obs.disconnected = True  # stopped before its end: the client went away
            raise
        finally:
            if obs is not None:
                obs.usage = usage.usage
            trace.failed_midway = wire.ends_with_error_event(last)
