"""The worker's side of a trace: the wrapper's traceparent is taken (or a trace started), made current so
openai_worker passes it to its upstream with the worker's span as parent, and, when exporting, the
generation gets its span with the GenAI attributes."""
from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from common import tracing, wire
from common.http import Endpoint, SSEResponse, handle_error, request_id
from common.tracing import Exporter, Trace


def traced(endpoint: Endpoint, capability: str, exporter: Exporter | None) -> Endpoint:
    operation = tracing.OPERATIONS.get(capability, capability)

    async def handle(request: Request) -> Response:
        trace = tracing.begin(exporter, request.scope["headers"], request_id(request), operation, operation)
        if trace.span is None:
            return await endpoint(request)  # ids only: nothing to end
        try:
            response = await endpoint(request)
        except Exception as exc:  # answered here so the span ends with the error's status
            response = await handle_error(request, exc)
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
