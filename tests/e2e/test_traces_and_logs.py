"""Traces across the hops and JSON logs, with real processes: the client's W3C traceparent goes wrapper ->
worker (openai_worker.py) -> its upstream (a recording HTTP server in this test) in one trace and is echoed;
with OTEL_EXPORTER_OTLP_ENDPOINT set, the spans reach an OTLP/HTTP receiver (also in this test) with the
GenAI attributes; `--log-format json` prints one JSON object per line on all three scripts."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from common.tracing import parse_traceparent
from tests.support.fake_upstream import chat_answer
from tests.support.procs import free_port, wait_until
from tests.support.servers import SECRET_ENV, routable, start_worker, start_wrapper, unique_model

TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Recorder:
    """A loopback HTTP server in a thread: an OpenAI-compatible upstream that records the headers of each
    chat call, and an OTLP/HTTP receiver that keeps the spans posted to /v1/traces."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[dict[str, str]] = []
        self.spans: list = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    recorder.spans += [(rs.resource, span) for rs in request.resource_spans
                                       for ss in rs.scope_spans for span in ss.spans]
                    self._answer(b"", "application/x-protobuf")
                    return
                recorder.calls.append({k.lower(): v for k, v in self.headers.items()})
                model = json.loads(body)["model"]
                self._answer(json.dumps(chat_answer(model, "traced answer")).encode(), "application/json")

            def _answer(self, payload: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture(scope="module")
def plain(module_procs, consul, recorder):
    """Export off (the default); every script logging JSON at DEBUG."""
    relayed, echoed = unique_model("traced"), unique_model("traced-echo")
    json_logs = ("--log-format", "json", "--log-level", "debug")
    relay = start_worker(module_procs, consul, "", "--models", relayed, *json_logs, script="openai_worker.py",
                         env={"OPENAI_BASE_URL": recorder.url + "/v1", **SECRET_ENV})
    echo = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", echoed, *json_logs,
                        env=SECRET_ENV)
    wrapper = start_wrapper(module_procs, consul, *json_logs, env=SECRET_ENV)
    wait_until(lambda: routable(wrapper, relayed) and routable(wrapper, echoed), 10, "routable")
    return wrapper, relay, echo, relayed, echoed


def chat(wrapper, model, headers=None):
    return httpx.post(wrapper.base_url + "/chat/completions", headers=headers, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hello"}]})


def test_the_clients_traceparent_crosses_wrapper_worker_and_upstream(plain, recorder):
    wrapper, _, _, relayed, _ = plain
    r = chat(wrapper, relayed, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=abc"})
    assert r.status_code == 200
    echoed = parse_traceparent(r.headers["traceparent"])
    assert echoed is not None and echoed[0] == TRACE and echoed[1] != CLIENT_SPAN  # the wrapper's own span
    upstream = recorder.calls[-1]
    trace_id, parent, flags = parse_traceparent(upstream["traceparent"])
    assert trace_id == TRACE and flags == "01" and parent not in (CLIENT_SPAN, echoed[1])  # the worker's span
    assert upstream["tracestate"] == "vendor=abc"


@pytest.mark.parametrize("sent", [None, "00-not-a-valid-traceparent-01", f"00-{'0' * 32}-{CLIENT_SPAN}-01"])
def test_a_missing_or_bad_traceparent_is_replaced_by_a_new_trace(plain, recorder, sent):
    wrapper, _, _, relayed, _ = plain
    r = chat(wrapper, relayed, {"traceparent": sent} if sent else None)
    assert r.status_code == 200
    echoed = parse_traceparent(r.headers["traceparent"])
    assert echoed is not None and echoed[0] != "0" * 32
    assert parse_traceparent(recorder.calls[-1]["traceparent"])[0] == echoed[0]  # one trace, end to end


def test_an_error_answer_carries_a_traceparent_too(plain):
    wrapper, *_ = plain
    r = chat(wrapper, "no-such-model-" + unique_model())
    assert r.status_code == 404 and parse_traceparent(r.headers["traceparent"]) is not None


def lines_of(proc) -> list[dict]:
    """Every line a process logged, each parsed as JSON (fails on a line that is not JSON)."""
    return [json.loads(line) for line in proc.output().splitlines() if line.strip()]


def test_log_format_json_gives_one_object_per_line_with_the_requests_fields(plain):
    wrapper, relay, echo, _, echoed = plain
    r = chat(wrapper, echoed, {"X-Request-ID": "rid-json-logs-1"})
    assert r.status_code == 200
    ours: list[dict] = []

    def logged() -> bool:
        ours[:] = [line for line in lines_of(wrapper.proc) if line.get("request_id") == "rid-json-logs-1"]
        return any("status" in line for line in ours)

    wait_until(logged, 10, "the wrapper's line about the request")
    done = next(line for line in ours if "status" in line)
    assert done["model"] == echoed and done["instance"].endswith(f"-127.0.0.1-{echo.port}")
    assert done["status"] == 200 and done["duration"] >= 0 and done["level"] == "DEBUG"
    assert {"time", "logger", "message"} <= done.keys()
    wait_until(lambda: any(line.get("request_id") == "rid-json-logs-1" for line in lines_of(echo.proc)), 10,
               "the worker's line about the request")
    for proc in (wrapper.proc, relay.proc, echo.proc):  # all three scripts: nothing but JSON objects
        assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines_of(proc))


def test_the_default_log_format_stays_human_readable(plain, module_procs, consul):
    wrapper = start_wrapper(module_procs, consul)
    assert "INFO" in wrapper.proc.output() and not wrapper.proc.output().lstrip().startswith("{")


def test_spans_are_exported_over_otlp_with_gen_ai_attributes(module_procs, consul, recorder):
    model = unique_model("exported")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": recorder.url, "OTEL_BSP_SCHEDULE_DELAY": "100", **SECRET_ENV}
    start_worker(module_procs, consul, "", "--models", f"{model}=upstream-{model}", script="openai_worker.py",
                 env={"OPENAI_BASE_URL": recorder.url + "/v1", **env})
    wrapper = start_wrapper(module_procs, consul, env=env)
    wait_until(lambda: routable(wrapper, model), 10, "routable")
    r = chat(wrapper, model, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
    assert r.status_code == 200
    upstream_parent = parse_traceparent(recorder.calls[-1]["traceparent"])[1]

    def spans(service: str, kind: int) -> list:
        return [s for resource, s in recorder.spans if s.trace_id.hex() == TRACE and s.kind == kind
                and any(a.key == "service.name" and a.value.string_value == service for a in resource.attributes)]

    SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers
    wait_until(lambda: spans("openai-api-wrapper", SERVER) and spans("openai-api-wrapper-worker", SERVER), 20,
               "the spans of both processes at the OTLP receiver")
    (request,) = spans("openai-api-wrapper", SERVER)
    (attempt,) = spans("openai-api-wrapper", CLIENT)
    (generation,) = spans("openai-api-wrapper-worker", SERVER)
    assert request.parent_span_id.hex() == CLIENT_SPAN and request.name == f"chat {model}"
    assert attempt.parent_span_id == request.span_id
    assert generation.parent_span_id == attempt.span_id  # the worker's parent is the attempt it served
    assert upstream_parent == generation.span_id.hex()  # and it is the upstream's parent
    assert r.headers["traceparent"] == f"00-{TRACE}-{request.span_id.hex()}-01"
    for span in (request, generation):
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["gen_ai.operation.name"].string_value == "chat"
        assert attributes["gen_ai.request.model"].string_value == model
        assert attributes["gen_ai.response.model"].string_value == f"upstream-{model}"  # the upstream's answer
        assert attributes["gen_ai.usage.input_tokens"].int_value == 3
        assert attributes["gen_ai.usage.output_tokens"].int_value == 2
