"""Around each model request of the wrapper: its trace (taken from the client or started, passed to the
worker, echoed), the status page's recent figures (wrapper/recent.py), spans when exporting, and a DEBUG
line with its outcome. Per request: a few ids, a context variable, two dict reads — no I/O."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from common import tracing, wire
from common.http import SSEResponse, handle_error, request_id
from common.tracing import Exporter, Trace
from svc_mgr import Instance, RoutingTable

from .recent import Recent

log = logging.getLogger(__name__)

MODEL_KEY = "observed_model"  # in the ASGI scope: the model a request was admitted for, if recorded
TRACEPARENT = tracing.TRACEPARENT.encode()


class Observer:
    def __init__(self, table: RoutingTable, exporter: Exporter | None = None) -> None:
        self.table = table
        self.exporter = exporter
        self.recent = Recent()

    def wrap(self, endpoints: Mapping[str, tuple[Callable, str]]) -> dict[str, Callable]:
        """path -> (endpoint, capability) as observed endpoints."""
        return {path: self.observed(endpoint, capability) for path, (endpoint, capability) in endpoints.items()}

    # ---- called by the request path --------------------------------------------------------------

    def admitted(self, request: Request, model: str) -> None:
        """The body named `model` (Wrapper._route, after its checks). Only models the routing table has
        seen are counted, so a client cannot grow the recorder with made-up names."""
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

    # ---- the wrapper around an endpoint ----------------------------------------------------------

    def observed(self, endpoint: Callable, capability: str) -> Callable:
        operation = tracing.OPERATIONS.get(capability, capability)
        exporter = self.exporter

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            trace = tracing.begin(exporter, request.scope["headers"], request_id(request), operation, operation)
            try:
                response = await endpoint(request)
            except Exception as exc:  # answered here, not by DirectRoutes, so the error carries traceparent too
                response = await handle_error(request, exc)
            response.raw_headers.append((TRACEPARENT, trace.traceparent().encode()))
            model = request.scope.get(MODEL_KEY)
            if isinstance(response, SSEResponse):  # a stream ends later: count it then
                response.chunks = self._timed(response.chunks, trace, model, started)
                response.on_close = self._on_close(response.on_close, trace, model, response.status_code, started)
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

    def _on_close(self, then: Callable[[], None] | None, trace: Trace, model: str | None, status: int,
                  started: float) -> Callable[[], None]:
        def on_close() -> None:
            try:
                if then is not None:
                    then()
            finally:
                # a stream that failed after its 200 counts as the 502 its error event reports
                self._finish(trace, model, 502 if trace.failed_midway else status, started, trace.summary)
        return on_close

    async def _timed(self, chunks: AsyncGenerator[bytes, None], trace: Trace, model: str | None,
                     started: float) -> AsyncGenerator[bytes, None]:
        """The stream as it comes, noting when its first event (not a keep-alive comment) passes: the time
        to first token; and whether it ended with an error event (Hop.stream's, or the worker's)."""
        if trace.span is not None:
            chunks = tracing.summarising(chunks, trace)
        first_seen = model is None
        last = b""
        try:
            async for chunk in chunks:
                if not first_seen and not wire.sse_comments_only(chunk):
                    first_seen = True
                    self.recent.first_token(model, time.perf_counter() - started)  # type: ignore[arg-type]
                last = chunk
                yield chunk
        finally:
            await chunks.aclose()
            trace.failed_midway = wire.ends_with_error_event(last)
