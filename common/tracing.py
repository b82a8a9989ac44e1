"""W3C Trace Context (`traceparent` / `tracestate`) across the hops, and optional OpenTelemetry export.

Every request carries a `Trace`: the client's trace id (or a new one) and a span id of our own. With
export off (the default) a span is only ids — no SDK object, a few bytes of randomness per request.
With `tracing.otlp_endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT) set, the same ids belong to real SDK
spans sent over OTLP/HTTP, carrying OpenTelemetry's GenAI attributes.

The request's Trace sits in a context variable for the task serving the request, so the hop to the
worker (and openai_worker's call to its upstream) reads it without threading it through every call.
"""
from __future__ import annotations

import contextvars
import logging
import os
import random
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .http import RawHeaders, raw_header
from .settings import TracingSettings

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version 00: 2 hex version - 32 hex trace id - 16 hex parent id - 2 hex flags; all-zero ids are invalid
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
MAX_TRACESTATE = 512  # W3C: vendors may drop a longer tracestate; we drop it whole rather than cut it
_TRACESTATE_CHARS = re.compile(r"[\x20-\x7e]*")  # printable ASCII (list members, commas, spaces)
SAMPLED = "01"


# Ids from `random`, as OpenTelemetry's SDK makes them: W3C asks for randomness, not secrecy, and
# os.urandom costs a system call per id (measured: twice the time, docs/performance.md)
def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def new_ids() -> tuple[str, str]:
    """A new trace id and span id at once: one draw of 24 bytes costs half of two formatted draws."""
    digits = random.randbytes(24).hex()
    trace_id, span_id = digits[:32], digits[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # invalid in W3C's format (once in 2^64)
        return new_trace_id(), new_span_id()
    return trace_id, span_id


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid traceparent, else None (then a new trace starts).
    A future version (not 00, not ff) may carry more fields after ours: accepted, as the spec says."""
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace_id, parent, flags


def valid_tracestate(value: str | None) -> str | None:
    """The client's tracestate if it is short printable ASCII, else None (it is dropped, not repaired)."""
    if not value or len(value) > MAX_TRACESTATE or not _TRACESTATE_CHARS.fullmatch(value):
        return None
    return value


@dataclass(slots=True)
class Trace:
    """One request's place in a trace, and what its logs and spans say about it."""

    trace_id: str
    span_id: str  # this process's span for the request: the parent of what it calls
    flags: str = SAMPLED
    state: str | None = None
    parent_id: str | None = None  # the caller's span, if the request came with a traceparent
    request_id: str = "-"
    model: str | None = None
    instance: str | None = None  # the worker the last attempt went to (wrapper)
    span: Any = None  # the SDK span when exporting
    attempts: list[Any] = field(default_factory=list)  # the SDK spans of the hop's attempts
    summary: Any = None  # a stream's wire.AnswerSummary, once it ended (when exporting)
    failed_midway: bool = False  # a stream that ended with an error event after its 200

    def traceparent(self, span_id: str | None = None) -> str:
        return f"00-{self.trace_id}-{span_id or self.span_id}-{self.flags}"

    def headers(self, span_id: str | None = None) -> dict[str, str]:
        """What goes to the next hop: our span (or `span_id`) as its parent, the client's tracestate."""
        out = {TRACEPARENT: self.traceparent(span_id)}
        if self.state:
            out[TRACESTATE] = self.state
        return out


CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("trace", default=None)


def current() -> Trace | None:
    return CURRENT.get()


def outgoing_headers() -> dict[str, str]:
    """The trace headers for a call made while serving the current request ({} outside a request)."""
    trace = CURRENT.get()
    return trace.headers() if trace is not None else {}


def start(headers: RawHeaders, request_id: str = "-") -> Trace:
    """The request's Trace, from the caller's traceparent/tracestate if valid (else a new trace, and the
    caller's tracestate is dropped with it), with a new span id; made current for this task."""
    parsed = parse_traceparent(raw_header(headers, b"traceparent"))
    if parsed is None:
        trace = Trace(*new_ids(), request_id=request_id)
    else:
        trace_id, parent, flags = parsed
        trace = Trace(trace_id, new_span_id(), flags, valid_tracestate(raw_header(headers, b"tracestate")), parent,
                      request_id=request_id)
    CURRENT.set(trace)
    return trace


# ---- OpenTelemetry export (optional) ----------------------------------------------------------------

OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def otlp_endpoint(settings: TracingSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """Where spans go: OTEL_EXPORTER_OTLP_ENDPOINT (the standard variable) wins over tracing.otlp_endpoint."""
    environ = os.environ if environ is None else environ
    return environ.get(OTEL_ENDPOINT_ENV) or settings.otlp_endpoint


class Exporter:
    """The SDK's tracer when export is on; built once at start-up. `exporter` lets a test pass the SDK's
    InMemorySpanExporter (spans are then handed over at once instead of in batches)."""

    def __init__(self, service_name: str, endpoint: str | None = None, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            assert endpoint is not None
            self.provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
        self.tracer = self.provider.get_tracer("openai-api-wrapper")
        log.info("exporting spans over OTLP/HTTP to %s", endpoint or exporter.__class__.__name__)

    def start_span(self, trace: Trace, name: str, kind: str, parent_id: str | None,
                   attributes: Mapping[str, Any]) -> Any:
        """An SDK span in `trace`, child of `parent_id` (a remote span id) or a root; its id is the SDK's."""
        from opentelemetry import trace as otel
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

        context = None  # no parent: a root span, whose trace id the SDK picks (the caller adopts it)
        if parent_id is not None:
            state = TraceState.from_header([trace.state]) if trace.state else None
            parent = SpanContext(int(trace.trace_id, 16), int(parent_id, 16), is_remote=True,
                                 trace_flags=TraceFlags(int(trace.flags, 16)), trace_state=state)
            context = otel.set_span_in_context(NonRecordingSpan(parent))
        return self.tracer.start_span(name, context=context, kind=getattr(SpanKind, kind), attributes=attributes)

    def shutdown(self) -> None:
        self.provider.shutdown()


def span_id_of(span: Any) -> str:
    return format(span.get_span_context().span_id, "016x")


def trace_id_of(span: Any) -> str:
    return format(span.get_span_context().trace_id, "032x")


def build_exporter(settings: TracingSettings, service_name: str) -> Exporter | None:
    """The Exporter if export is configured, else None (and tracing costs ids only)."""
    endpoint = otlp_endpoint(settings)
    if not endpoint:
        return None
    return Exporter(settings.service_name or service_name, endpoint)


# ---- a served request's span (wrapper request, worker generation) -----------------------------------

# OpenTelemetry's GenAI semantic conventions
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
OPERATION_NAME = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
HTTP_STATUS = "http.response.status_code"


def begin(exporter: Exporter | None, headers: RawHeaders, request_id: str, operation: str,
          name: str) -> Trace:
    """The request's Trace (current from now on); with an exporter, its SERVER span too."""
    trace = start(headers, request_id)
    if exporter is not None:
        span = exporter.start_span(trace, name, "SERVER", trace.parent_id, {OPERATION_NAME: operation})
        trace.span = span
        trace.span_id = span_id_of(span)
        trace.trace_id = trace_id_of(span)  # a root span's trace id is the SDK's
    return trace


def note_model(model: str) -> None:
    """The model the request names, once its body was read: for the logs and the span."""
    trace = CURRENT.get()
    if trace is None:
        return
    trace.model = model
    if trace.span is not None:
        trace.span.set_attribute(REQUEST_MODEL, model)
        operation = trace.span.attributes.get(OPERATION_NAME)
        trace.span.update_name(f"{operation} {model}")


def end(trace: Trace, status: int, summary: Any = None) -> None:
    """End the request's span (and any attempt spans left open) with its status and the answer's
    `wire.AnswerSummary` (response model, token usage), if it has one."""
    span = trace.span
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    for attempt in trace.attempts:
        if attempt.is_recording():
            attempt.set_attribute(HTTP_STATUS, status)
            attempt.end()
    span.set_attribute(HTTP_STATUS, status)
    if summary is not None:
        for key, value in ((RESPONSE_MODEL, summary.model), (INPUT_TOKENS, summary.input_tokens),
                           (OUTPUT_TOKENS, summary.output_tokens)):
            if value is not None:
                span.set_attribute(key, value)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


async def summarising(chunks: AsyncGenerator[bytes, None], trace: Trace) -> AsyncGenerator[bytes, None]:
    """A stream passed on as it comes, keeping the last event that names the model or carries usage, for
    the span's attributes (`trace.summary`, set when the stream ends). Used only when exporting."""
    from .wire import answer_summary

    kept = b""
    try:
        async for chunk in chunks:
            if b'"usage"' in chunk or not kept:
                kept = chunk
            yield chunk
    finally:
        await chunks.aclose()
        trace.summary = answer_summary(kept)
