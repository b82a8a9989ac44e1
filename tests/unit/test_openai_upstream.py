"""OpenAIUpstreamGen (what openai_worker.py serves) against a mocked upstream (respx), in process: every
upstream shape and failure, the worker app's answers, and model discovery. End to end through real
processes: tests/e2e/test_openai_worker.py."""
from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from common.errors import OpenAIError
from common.settings import Settings, UpstreamSettings
from generators.openai_upstream import OpenAIUpstreamGen, parse_aliases
from worker.app import Worker

BASE = "https://upstream.test/v1"
KEY = "sk-upstream-secret-0123456789"
UPSTREAM = UpstreamSettings(api_base=BASE, api_key=KEY, timeout=5.0)
CHAT = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}


def gen(models: str | None = "public=gpt-upstream") -> OpenAIUpstreamGen:
    return OpenAIUpstreamGen(aliases=parse_aliases(models), upstream=UPSTREAM)


async def _forward(g: OpenAIUpstreamGen, capability: str, request: dict, raw: bytes | None = None):
    await g.startup()
    try:
        forwarded = await g.forward(capability, request, raw if raw is not None else json.dumps(request).encode())
        if isinstance(forwarded.body, bytes):  # a JSON answer, read whole
            return forwarded, forwarded.body
        return forwarded, b"".join([chunk async for chunk in forwarded.body])
    finally:
        await g.shutdown()


def forward(g, capability, request, raw=None):
    return asyncio.run(_forward(g, capability, request, raw))


def failure(g, request=CHAT) -> OpenAIError:
    with pytest.raises(OpenAIError) as err:
        forward(g, "chat", request)
    assert KEY not in err.value.message
    return err.value


# ---- the upstream shapes -------------------------------------------------------------------------

@respx.mock
def test_the_body_passes_through_byte_for_byte_with_the_key():
    route = respx.post(f"{BASE}/chat/completions").respond(json={"id": "x", "choices": []})
    raw = b'{"model": "same", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.3, "new_field": [1]}'
    forwarded, body = forward(gen("same"), "chat", json.loads(raw), raw)
    sent = route.calls.last.request
    assert sent.content == raw  # nothing added, removed or re-encoded
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert (forwarded.status, forwarded.content_type, json.loads(body)) == (200, "application/json",
                                                                           {"id": "x", "choices": []})


@respx.mock
def test_an_alias_renames_only_the_model():
    route = respx.post(f"{BASE}/embeddings").respond(json={"data": []})
    forward(gen(), "embedding", {"model": "public", "input": ["a"], "dimensions": 8})
    assert json.loads(route.calls.last.request.content) == {"model": "gpt-upstream", "input": ["a"], "dimensions": 8}


@respx.mock
def test_a_stream_is_relayed_as_the_upstream_sent_it():
    events = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {"choices": []}\n\ndata: [DONE]\n\n'
    respx.post(f"{BASE}/completions").respond(headers={"content-type": "text/event-stream"}, content=events)
    forwarded, body = forward(gen(), "completion", {"model": "public", "prompt": "x", "stream": True})
    assert forwarded.content_type.startswith("text/event-stream")
    assert body == events


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b'data: {"choices": []}\n\n'
        raise httpx.ReadError("connection reset")


@respx.mock
def test_an_upstream_failing_mid_stream_ends_with_an_error_event():
    respx.post(f"{BASE}/chat/completions").respond(headers={"content-type": "text/event-stream"},
                                                     stream=_BrokenStream())
    _, body = forward(gen(), "chat", {**CHAT, "stream": True})
    first, error = body.split(b"\n\n", 1)
    assert first == b'data: {"choices": []}'
    assert json.loads(error.removeprefix(b"data: "))["error"]["code"] == "upstream_failed"


# ---- compressed answers, bodies cut in the middle ------------------------------------------------

ANSWER = json.dumps({"id": "x", "choices": [{"message": {"content": "compressible " * 50}}]}).encode()


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
])
@respx.mock
def test_a_compressed_json_answer_is_relayed_decoded(encoding, compress):
    respx.post(f"{BASE}/chat/completions").respond(headers={"content-type": "application/json",
                                                              "content-encoding": encoding}, content=compress(ANSWER))
    forwarded, body = forward(gen(), "chat", CHAT)
    assert isinstance(forwarded.body, bytes)  # read whole before anything is relayed
    assert body == ANSWER


class _HeldGzipStream(httpx.AsyncByteStream):
    """Gzipped SSE, one flush per event, holding everything after the first event back until `go` is set."""

    def __init__(self, events: list[bytes], go: asyncio.Event) -> None:
        self.events = events
        self.go = go

    async def __aiter__(self):
        gz = zlib.compressobj(wbits=31)
        yield gz.compress(self.events[0]) + gz.flush(zlib.Z_SYNC_FLUSH)
        await asyncio.wait_for(self.go.wait(), 5)
        for event in self.events[1:]:
            yield gz.compress(event) + gz.flush(zlib.Z_SYNC_FLUSH)
        yield gz.flush()


@respx.mock
def test_a_gzipped_stream_is_decoded_chunk_by_chunk():
    events = [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b'data: {"choices": []}\n\n',
              b"data: [DONE]\n\n"]

    async def go_():
        go = asyncio.Event()
        respx.post(f"{BASE}/chat/completions").respond(
            headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
            stream=_HeldGzipStream(events, go))
        g = gen()
        await g.startup()
        try:
            forwarded = await g.forward("chat", {**CHAT, "stream": True}, json.dumps(CHAT).encode())
            first = await anext(forwarded.body)  # while the upstream still holds the rest back
            go.set()
            return first, [chunk async for chunk in forwarded.body]
        finally:
            await g.shutdown()

    first, rest = asyncio.run(go_())
    assert first == events[0]
    assert b"".join(rest) == b"".join(events[1:])


class _BrokenJSON(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b'{"id": "x", "choi'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


class _Bytes(httpx.AsyncByteStream):
    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self):
        yield self.content


@pytest.mark.parametrize("headers, stream", [
    ({"content-type": "application/json"}, _BrokenJSON()),
    ({"content-type": "application/json", "content-encoding": "gzip"}, _Bytes(b"not gzip at all")),
])
@respx.mock
def test_a_json_answer_failing_midway_is_a_clean_502(headers, stream):
    respx.post(f"{BASE}/chat/completions").respond(headers=headers, stream=stream)
    err = failure(gen())
    assert (err.status, err.code) == (502, "upstream_failed")


@respx.mock
def test_the_worker_app_answers_a_cut_json_answer_with_a_502_and_frees_its_slot(schemas):
    respx.post(f"{BASE}/chat/completions").mock(side_effect=[
        httpx.Response(200, headers={"content-type": "application/json"}, stream=_BrokenJSON()),
        httpx.Response(200, json={"id": "whole"}),
    ])
    with TestClient(Worker(gen(), Settings(worker={"max_concurrency": 1, "max_queue": 0})).app()) as worker:
        cut = worker.post("/v1/chat/completions", json=CHAT)
        whole = worker.post("/v1/chat/completions", json=CHAT)  # a slot kept by the cut answer would make this 429
    assert cut.status_code == 502
    schemas.validate("ErrorResponse", cut.json())  # one JSON error: no half answer, no SSE event
    assert cut.json()["error"]["code"] == "upstream_failed"
    assert (whole.status_code, whole.json()) == (200, {"id": "whole"})


# ---- upstream errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 404, 422])
@respx.mock
def test_client_errors_pass_through_with_the_upstream_body(status):
    error = {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error",
             "param": "temperature", "code": "invalid_value"}
    respx.post(f"{BASE}/chat/completions").respond(status, json={"error": error})
    err = failure(gen())
    assert (err.status, err.message, err.type, err.param, err.code) == (status, *error.values())


@respx.mock
def test_the_key_is_cut_out_of_a_passed_on_message():
    respx.post(f"{BASE}/chat/completions").respond(400, json={"error": {"message": f"bad request for key {KEY}"}})
    assert failure(gen()).message == "bad request for key [OPENAI_API_KEY]"


@pytest.mark.parametrize("status", [400, 429, 500])
@respx.mock
def test_the_key_is_cut_out_of_every_field_of_an_upstream_error(status):
    error = {"message": f"key {KEY}", "type": f"invalid_request_error {KEY}", "param": f"input[{KEY}]",
             "code": {"seen": [KEY, {KEY: f"again {KEY}"}]}}
    respx.post(f"{BASE}/chat/completions").respond(status, json={"error": error})
    err = failure(gen())
    fields = (err.message, err.type, err.param, err.code)
    assert not any(KEY in str(f) for f in fields)
    assert "key [OPENAI_API_KEY]" in err.message
    if status == 400:  # passed on field by field, as strings (OpenAI types them so)
        assert (err.type, err.param) == ("invalid_request_error [OPENAI_API_KEY]", "input[[OPENAI_API_KEY]]")
        assert json.loads(err.code) == {"seen": ["[OPENAI_API_KEY]", {"[OPENAI_API_KEY]": "again [OPENAI_API_KEY]"}]}


@respx.mock
def test_rate_limit_keeps_retry_after():
    respx.post(f"{BASE}/chat/completions").respond(
        429, headers={"Retry-After": "12"}, json={"error": {"message": "Slow down", "code": "rate_limit_exceeded"}})
    err = failure(gen())
    assert (err.status, err.type, err.message, err.headers) == (429, "rate_limit_error", "Slow down",
                                                                {"Retry-After": "12"})


@pytest.mark.parametrize("status", [401, 403])
@respx.mock
def test_refused_credentials_are_the_workers_problem_502(status):
    respx.post(f"{BASE}/chat/completions").respond(
        status, json={"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}})
    err = failure(gen())
    assert err.status == 502
    assert err.code == "upstream_auth_failed"
    assert "refused this worker's credentials" in err.message


@pytest.mark.parametrize("exc, status, code", [
    (httpx.ConnectError("connection refused"), 502, "upstream_unreachable"),
    (httpx.RemoteProtocolError("server disconnected"), 502, "upstream_unreachable"),
    (httpx.ConnectTimeout("connect timed out"), 504, "upstream_timeout"),
    (httpx.ReadTimeout("read timed out"), 504, "upstream_timeout"),
])
@respx.mock
def test_unreachable_is_502_and_timeout_is_504(exc, status, code):
    respx.post(f"{BASE}/chat/completions").mock(side_effect=exc)
    err = failure(gen())
    assert (err.status, err.code) == (status, code)


@pytest.mark.parametrize("response, status, code", [
    (httpx.Response(500, text="<html>Internal Server Error</html>"), 502, "upstream_error"),
    (httpx.Response(503, json={"error": {"message": "overloaded"}}), 502, "upstream_error"),
    (httpx.Response(504, text="gateway timeout"), 504, "upstream_timeout"),
])
@respx.mock
def test_upstream_server_errors(response, status, code):
    respx.post(f"{BASE}/chat/completions").mock(return_value=response)
    err = failure(gen())
    assert (err.status, err.code) == (status, code)


@respx.mock
def test_the_worker_app_answers_upstream_errors_in_openai_shape(schemas):
    respx.post(f"{BASE}/chat/completions").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "Slow down"}}),
        httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}),
        httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"data: [DONE]\n\n"),
    ])
    with TestClient(Worker(gen(), Settings()).app()) as worker:
        limited = worker.post("/v1/chat/completions", json=CHAT)
        refused = worker.post("/v1/chat/completions", json=CHAT)
        streamed = worker.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert refused.status_code == 502
    for response in (limited, refused):
        schemas.validate("ErrorResponse", response.json())
        assert KEY not in response.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.content == b"data: [DONE]\n\n"


# ---- model discovery -----------------------------------------------------------------------------

def _start(g: OpenAIUpstreamGen) -> tuple[str, ...]:
    async def go():
        await g.startup()
        await g.shutdown()
        return g.models
    return asyncio.run(go())


@respx.mock
def test_models_are_discovered_from_the_upstream():
    respx.get(f"{BASE}/models").respond(json={"object": "list", "data": [
        {"id": "gpt-a", "object": "model"}, {"id": "gpt-b", "object": "model"}, {"id": "gpt-a"}]})
    g = gen(None)
    assert _start(g) == ("gpt-a", "gpt-b")
    assert g.aliases == {"gpt-a": "gpt-a", "gpt-b": "gpt-b"}


@respx.mock
def test_given_models_skip_discovery():
    route = respx.get(f"{BASE}/models").respond(json={"data": [{"id": "other"}]})
    assert _start(gen("a,b=upstream-b")) == ("a", "b")
    assert not route.called


def test_template_worker_style_models_are_aliases_too():
    g = OpenAIUpstreamGen(models=["a", "b=upstream-b"], upstream=UPSTREAM)
    assert (g.models, g.aliases) == (("a", "b"), {"a": "a", "b": "upstream-b"})


@pytest.mark.parametrize("response, says", [
    (httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}), "credentials"),
    (httpx.Response(200, json={"object": "list", "data": []}), "lists no models"),
    (httpx.Response(200, text="<html>not an API</html>"), "without an OpenAI model list"),
])
@respx.mock
def test_discovery_failures_stop_start_up_with_a_reason(response, says):
    respx.get(f"{BASE}/models").mock(return_value=response)
    with pytest.raises(ValueError) as err:
        _start(gen(None))
    assert says in str(err.value)
    assert KEY not in str(err.value)
