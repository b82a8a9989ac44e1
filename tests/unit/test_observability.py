"""In process: W3C trace context parsing, the status page's recent-traffic recorder, the worker's spans with
the SDK's InMemorySpanExporter, the JSON log formatter, and the admin flag of API keys."""
from __future__ import annotations

import logging

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from common import tracing
from common.logs import JsonFormatter
from common.settings import ApiKey, Settings, TracingSettings
from generators.echo import EchoGen
from worker.app import Worker
from wrapper.recent import WINDOW_SECONDS, Recent, percentile
from wrapper.status import e

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


# ---- traceparent ------------------------------------------------------------------------------------

def test_a_valid_traceparent_is_kept():
    assert tracing.parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")
    assert tracing.parse_traceparent(f"cc-{TRACE}-{PARENT}-01-future-stuff") == (TRACE, PARENT, "01")


@pytest.mark.parametrize("bad", [None, "", "garbage", f"00-{TRACE}-{PARENT}", f"00-{TRACE.upper()}-{PARENT}-01",
                                 f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01", f"ff-{TRACE}-{PARENT}-01",
                                 f"00-{TRACE}-{PARENT}-01-extra", f"00-{TRACE}-{PARENT}-01" + "x" * 600])
def test_a_bad_traceparent_starts_a_new_trace(bad):
    assert tracing.parse_traceparent(bad) is None
    trace = tracing.start([(b"traceparent", bad.encode()), (b"tracestate", b"vendor=1")] if bad is not None else [])
    assert len(trace.trace_id) == 32 and trace.trace_id != TRACE and trace.state is None and trace.parent_id is None
    assert tracing.parse_traceparent(trace.traceparent()) == (trace.trace_id, trace.span_id, "01")


def test_the_next_hop_gets_our_span_as_parent_and_the_callers_tracestate():
    trace = tracing.start([(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode()), (b"tracestate", b"congo=t61rcWkgMzE")],
                          "rid-1")
    assert tracing.current() is trace and trace.parent_id == PARENT and trace.span_id != PARENT
    assert tracing.outgoing_headers() == {"traceparent": f"00-{TRACE}-{trace.span_id}-00",
                                          "tracestate": "congo=t61rcWkgMzE"}
    assert tracing.valid_tracestate("a=1\x00") is None and tracing.valid_tracestate("a" * 600) is None


def test_the_standard_variable_wins_over_the_setting():
    settings = TracingSettings(otlp_endpoint="http://collector:4318")
    assert tracing.otlp_endpoint(settings, {}) == "http://collector:4318"
    assert tracing.otlp_endpoint(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}) == "http://other:4318"
    assert tracing.otlp_endpoint(TracingSettings(), {}) is None


# ---- the recorder -----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_recent_counts_requests_errors_and_in_flight_over_the_window():
    clock = Clock()
    recent = Recent(clock)
    for status in (200, 200, 503, 429, 400):
        recent.admitted("m")
        recent.finished("m", status)
    recent.admitted("m")  # still running
    clock.now += 10
    figures = recent.figures("m")
    assert (figures.requests, figures.errors, figures.in_flight) == (5, 2, 1)
    assert figures.error_rate == pytest.approx(0.4) and figures.rps == pytest.approx(0.5)
    clock.now += WINDOW_SECONDS  # everything left the window
    assert recent.figures("m").requests == 0 and recent.figures("m").error_rate is None


def test_recent_reuses_a_slot_when_its_second_comes_round_again():
    clock = Clock()
    recent = Recent(clock)
    recent.finished("m", 200, admitted=False)
    clock.now += WINDOW_SECONDS  # the same slot, a new second
    recent.finished("m", 200, admitted=False)
    assert recent.figures("m").requests == 1


def test_time_to_first_token_percentiles_over_the_window():
    clock = Clock()
    recent = Recent(clock)
    for ms in range(1, 101):
        recent.first_token("m", ms / 1000)
    figures = recent.figures("m")
    assert figures.ttft_p50 == pytest.approx(0.050) and figures.ttft_p95 == pytest.approx(0.095)
    assert percentile([1.0], 0.95) == 1.0
    clock.now += WINDOW_SECONDS + 1
    assert recent.figures("m").ttft_p50 is None


def test_the_page_escapes_what_it_shows():
    assert e('<script>alert("x")</script>') == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert e(None) == "—"


# ---- spans, with the SDK's in-memory exporter ---------------------------------------------------------

@pytest.fixture
def traced_worker():
    spans = InMemorySpanExporter()
    worker = Worker(EchoGen(models=["m"]), Settings())
    worker.exporter = tracing.Exporter("test-worker", exporter=spans)
    with TestClient(worker.app(), raise_server_exceptions=False) as client:
        yield client, spans


def test_the_worker_exports_a_generation_span_with_gen_ai_attributes(traced_worker):
    client, spans = traced_worker
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "a b c"}]},
                    headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert r.status_code == 200
    (span,) = spans.get_finished_spans()
    assert span.name == "chat m" and span.kind.name == "SERVER"
    assert format(span.context.trace_id, "032x") == TRACE and format(span.parent.span_id, "016x") == PARENT
    attributes = dict(span.attributes)
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.response.model"] == "m"
    usage = r.json()["usage"]
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 3
    assert attributes["http.response.status_code"] == 200


def test_a_streamed_generation_span_ends_with_the_streams_usage(traced_worker):
    client, spans = traced_worker
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "one two"}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    (span,) = spans.get_finished_spans()
    assert span.parent is None  # no traceparent came: a root span
    assert span.attributes["gen_ai.usage.output_tokens"] == 2 and span.attributes["gen_ai.response.model"] == "m"


def test_a_refused_request_ends_its_span_with_the_status(traced_worker):
    client, spans = traced_worker
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 404 and span.name == "chat"


def test_one_observer_gives_a_failure_to_the_metrics_and_the_span_alike():
    """worker/observe.observed: the worker's metrics and its span both see a refusal's status."""
    from prometheus_client.parser import text_string_to_metric_families

    spans = InMemorySpanExporter()
    worker = Worker(EchoGen(models=["m"]), Settings())
    worker.exporter = tracing.Exporter("test-worker", exporter=spans)
    assert worker.metrics is not None
    with TestClient(worker.app(), raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": "not a list"})
    assert r.status_code == 400
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 400
    counted = [s for f in text_string_to_metric_families(worker.metrics.exposition.render().decode())
               for s in f.samples if s.name == "oaw_worker_requests_total" and s.labels["status"] == "400"]
    assert [s.value for s in counted] == [1.0]


def test_a_cancelled_generation_ends_its_span_as_client_closed():
    import asyncio

    from starlette.requests import Request

    from common.http import CLIENT_CLOSED
    from common.wire import Capability
    from worker.observe import observed

    spans = InMemorySpanExporter()

    async def cancelled(request: Request, capability: Capability):
        raise asyncio.CancelledError

    handle = observed(cancelled, Capability.CHAT, None, tracing.Exporter("test-worker", exporter=spans))
    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []})
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(handle(request))
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == CLIENT_CLOSED


# ---- logs and keys ----------------------------------------------------------------------------------

def test_a_json_log_line_carries_the_requests_fields():
    trace = tracing.start([], "rid-42")
    trace.model, trace.instance = "m", "echo-127.0.0.1-9"
    record = logging.LogRecord("wrapper", logging.INFO, __file__, 1, "request %s done", ("rid-42",), None)
    record.status, record.duration = 200, 0.0123
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "request rid-42 done" and line["level"] == "INFO" and line["logger"] == "wrapper"
    assert (line["request_id"], line["model"], line["instance"], line["status"], line["duration"]) == (
        "rid-42", "m", "echo-127.0.0.1-9", 200, 0.0123)
    assert line["time"].endswith("+00:00")


def test_an_api_key_is_not_admin_unless_it_says_so():
    assert ApiKey(key="sk-0123456789").admin is False
    assert ApiKey(key="sk-0123456789", admin=True).admin is True


def test_a_failed_over_attempt_span_ends_in_error_and_the_next_is_the_workers_parent():
    from svc_mgr import Instance, RoutingTable
    from wrapper.observe import Observer

    spans = InMemorySpanExporter()
    exporter = tracing.Exporter("test-wrapper", exporter=spans)
    observer = Observer(RoutingTable(), None, exporter)
    trace = tracing.begin(exporter, [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())], "rid", "chat", "chat")
    first, second = (Instance(id=f"echo-{i}", service="echo", address="127.0.0.1", port=i, models=("m",)) for i in (1, 2))
    observer.attempt_headers(first)
    headers = observer.attempt_headers(second)
    tracing.end(trace, 200)
    failed, served, request = spans.get_finished_spans()
    assert failed.status.status_code.name == "ERROR" and failed.attributes["openai_api_wrapper.instance"] == "echo-1"
    assert served.status.status_code.name == "UNSET" and served.attributes["http.response.status_code"] == 200
    assert failed.parent.span_id == served.parent.span_id == request.context.span_id
    assert headers["traceparent"] == f"00-{TRACE}-{format(served.context.span_id, '016x')}-01"
    assert format(request.parent.span_id, "016x") == PARENT


def test_a_stream_ending_with_an_error_event_is_told_from_one_that_talks_about_errors():
    from common.errors import BadGateway
    from common.wire import ends_with_error_event, sse_error_event, sse_event

    assert ends_with_error_event(b"\n\n" + sse_error_event(BadGateway("failed", code="worker_failed")))
    assert not ends_with_error_event(sse_event({"choices": [{"delta": {"content": 'data: {"error": 1}'}}]}))
    assert not ends_with_error_event(b"data: [DONE]\n\n")


def test_a_new_trace_gets_w3c_ids_drawn_together_and_never_the_same_twice():
    ids = {tracing.new_ids() for _ in range(1000)}
    assert len(ids) == 1000
    for trace_id, span_id in ids:
        assert tracing.parse_traceparent(f"00-{trace_id}-{span_id}-01") == (trace_id, span_id, "01")
