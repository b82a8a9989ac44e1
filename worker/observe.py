"""Around each generation request of the worker, in one place: its metrics (worker/metrics.py, when on) and
its trace — the wrapper's traceparent taken (or a trace started) and made current, so openai_worker passes
it to its upstream with the worker's span as parent, and, when exporting, the generation's span with the
GenAI attributes. A failure is answered here, so both see its status."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from common import tracing, wire
from common.http import CLIENT_CLOSED, Endpoint, SSEResponse, handle_error, request_id
from common.tracing import Exporter, Trace
from common.wire import Capability

from .metrics import WorkerMetrics

# what is observed: the worker's handling of one request of a capability
Serve = Callable[[Request, Capability], Awaitable[Response]]


def observed(serve: Serve, capability: Capability, metrics: WorkerMetrics | None,
             exporter: Exporter | None) -> Endpoint:
    operation = tracing.OPERATIONS.get(capability, capability)

    async def handle(request: Request) -> Response:
        trace = tracing.begin(exporter, request.scope["headers"], request_id(request), operation, operation)
        obs = metrics.begin(request, capability) if metrics is not None else None
        try:
            response = await serve(request, capability)
        except Exception as exc:
            if metrics is not None and obs is not None:
                metrics.failed(obs, exc)
            response = await handle_error(request, exc)
        except BaseException as exc:  # cancelled: the client went away
            if metrics is not None and obs is not None:
                metrics.failed(obs, exc)
            tracing.end(trace, CLIENT_CLOSED)
            raise
        else:
            if metrics is not None and obs is not None:
                metrics.responded(obs, response)
        if trace.span is not None:
            if isinstance(response, SSEResponse):
                response.chunks = tracing.summarising(response.chunks, trace)
                response.on_close = _ending(response.on_close, trace, response.status_code)
            else:
                tracing.end(trace, response.status_code, wire.answer_summary(bytes(response.body)))
        return response

    return handle


def _ending(then: Callable[[], None] | None, trace: Trace, status: int) -> Callable[[], None]:
    def on_close() -> None:
        try:
            if then is not None:
                then()
        finally:
            tracing.end(trace, status, trace.summary)
    return on_close
