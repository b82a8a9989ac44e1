"""The rest of the OpenAI API routed by model (#11): Responses, audio, images, moderations, rerank/score,
through the real wrapper -> a real openai_worker.py -> a fake upstream (tests/support/fake_upstream.py, a
real HTTP server) that records what it got and answers fixed bytes. Checked: the bytes pass unchanged both
ways, the answers fit OpenAI's schemas, bad input gets the right OpenAI error without a hop, a model
without an endpoint's capability is refused without a hop, and stateful endpoints say they are not
supported."""
from __future__ import annotations

import base64
import json

import httpx
import openai
import orjson
import pytest

from common.multipart import read_form
from common.wire import Capability
from tests.support.fake_upstream import (
    CUT_SPEECH,
    PNG,
    RESPONSE_TEXT,
    SPEECH_AUDIO,
    SPEECH_FIRST,
    SURFACE,
    TRANSCRIPT,
    TRANSCRIPT_EVENTS,
    TRANSCRIPT_JSON,
    TRANSCRIPT_SRT,
    FakeUpstream,
)
from tests.support.procs import free_port, wait_until
from tests.support.servers import registered, routable, start_worker, unique_model

MODEL = unique_model("surface")  # the upstream's own name: requests pass byte for byte
ALIASED = unique_model("aliased")  # renamed to UPSTREAM_NAME on the way up
UPSTREAM_NAME = "upstream-name"
CUT = unique_model("cut")  # its speech fails after the first chunk
CHAT_ONLY = unique_model("chat-only")  # an openai_worker started with --capabilities chat
WAV = b"RIFF" + bytes(range(256)) * 16  # any bytes: the relay never looks inside an upload
# Registered by hand at a port nothing listens on, so any request the wrapper passes on fails with a 502:
# a 400 for one of these proves the wrapper refused it without a hop.
GHOST = unique_model("ghost")  # claims every capability
GHOST_CHAT = unique_model("ghost-chat")  # claims chat only


@pytest.fixture(scope="module")
def workers(module_procs, consul, upstream):
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "sk-surface-test-key"}
    start_worker(module_procs, consul, "", "--models", f"{MODEL},{ALIASED}={UPSTREAM_NAME},{CUT}={CUT_SPEECH}",
                 "--svc-name", unique_model("surface-svc"), script="openai_worker.py", env=env)
    start_worker(module_procs, consul, "", "--models", CHAT_ONLY, "--capabilities", "chat",
                 "--svc-name", unique_model("chat-only-svc"), script="openai_worker.py", env=env)


@pytest.fixture(scope="module")
def ghosts(consul):
    with (registered(consul, unique_model("ghost-svc"), free_port(), GHOST, list(Capability)),
          registered(consul, unique_model("ghost-chat-svc"), free_port(), GHOST_CHAT, [Capability.CHAT])):
        yield


@pytest.fixture(scope="module")
def url(workers, ghosts, wrapper) -> str:
    for model in (MODEL, ALIASED, CHAT_ONLY, GHOST, GHOST_CHAT):
        wait_until(lambda m=model: routable(wrapper, m), 15, f"{model} to be routable")
    return wrapper.base_url


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def last(upstream: FakeUpstream) -> tuple[str, str, bytes]:
    return upstream.received[-1]


def sse_data(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


# ---- each endpoint: bytes both ways, the SDK, OpenAI's schemas -------------------------------------

def test_responses_json_bytes_pass_unchanged_both_ways(url, client, upstream, schemas):
    raw = b'{"model": "%s",  "input": "hi", "x_vendor_field": [1, {"k": null}]}' % MODEL.encode()
    answer = httpx.post(f"{url}/responses", content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert (answer.status_code, answer.content) == (200, SURFACE["/v1/responses"])
    assert last(upstream) == ("/v1/responses", "application/json", raw)
    response = client.responses.create(model=MODEL, input="hi", instructions="be brief")
    assert response.output_text == RESPONSE_TEXT
    schemas.validate("Response", response.model_dump(mode="json", exclude_unset=True))
    count = client.responses.input_tokens.count(model=MODEL, input="hi")
    assert count.input_tokens == 7
    assert last(upstream)[0] == "/v1/responses/input_tokens"


def test_responses_stream(url, client, upstream, schemas):
    events = list(client.responses.create(model=MODEL, input="hi", stream=True))
    assert [e.type for e in events] == ["response.created", "response.output_text.delta", "response.completed"]
    assert events[-1].response.output_text == RESPONSE_TEXT
    raw = httpx.post(f"{url}/responses", json={"model": MODEL, "input": "hi", "stream": True}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    for event in sse_data(raw.content):
        schemas.validate("ResponseStreamEvent", event)


def test_speech_streams_audio_as_it_arrives(client, upstream):
    """The fake upstream sends the first chunk, then holds the rest until the client has read it: a hop
    that buffered the answer would deliver nothing until the hold ran out."""
    with client.audio.speech.with_streaming_response.create(model=MODEL, input="say this", voice="alloy") as answer:
        assert answer.headers["content-type"] == "audio/mpeg"
        chunks = answer.iter_bytes()
        received = b""
        while len(received) < SPEECH_FIRST:
            received += next(chunks)
        upstream.release_speech()
        received += b"".join(chunks)
    assert received == SPEECH_AUDIO
    assert upstream.speech_held_until_released is True
    path, _, body = last(upstream)
    assert (path, json.loads(body)["input"]) == ("/v1/audio/speech", "say this")


def test_speech_that_fails_midway_cuts_the_clients_connection(url):
    """No error can be framed inside audio: the client must see a truncated body, not a short 'success'."""
    received = b""
    with pytest.raises(httpx.HTTPError), httpx.stream(
            "POST", f"{url}/audio/speech", json={"model": CUT, "input": "x", "voice": "alloy"}, timeout=30) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_bytes():
            received += chunk
    assert received == SPEECH_AUDIO[:SPEECH_FIRST]


def test_transcription_form_bytes_pass_unchanged_both_ways(url, upstream, schemas):
    request = httpx.Request("POST", f"{url}/audio/transcriptions", data={"model": MODEL, "language": "en"},
                            files={"file": ("speech.wav", WAV, "audio/wav")})
    raw, content_type = request.read(), request.headers["content-type"]
    answer = httpx.post(request.url, content=raw, headers={"Content-Type": content_type}, timeout=30)
    assert (answer.status_code, answer.content) == (200, TRANSCRIPT_JSON)
    assert last(upstream) == ("/v1/audio/transcriptions", content_type, raw)  # the boundary too
    schemas.validate("CreateTranscriptionResponseJson", answer.json())


def test_transcription_and_translation_answer_formats(client, upstream, schemas):
    assert client.audio.transcriptions.create(model=MODEL, file=("a.wav", WAV)).text == TRANSCRIPT
    path, _, raw = last(upstream)
    form = read_form(raw, last(upstream)[1])
    assert (path, form.fields["model"], form.files) == ("/v1/audio/transcriptions", MODEL, {"file"})
    text = client.audio.transcriptions.create(model=MODEL, file=("a.wav", WAV), response_format="text")
    assert text.strip() == TRANSCRIPT
    srt = client.audio.transcriptions.create(model=MODEL, file=("a.wav", WAV), response_format="srt")
    assert srt == TRANSCRIPT_SRT.decode()
    translation = client.audio.translations.create(model=MODEL, file=("a.wav", WAV))
    assert translation.text == TRANSCRIPT
    assert last(upstream)[0] == "/v1/audio/translations"
    schemas.validate("CreateTranslationResponseJson", translation.model_dump(mode="json", exclude_unset=True))


def test_transcription_stream(client, schemas):
    events = list(client.audio.transcriptions.create(model=MODEL, file=("a.wav", WAV), stream=True))
    assert [e.model_dump(mode="json", exclude_unset=True) for e in events] == TRANSCRIPT_EVENTS
    for event in TRANSCRIPT_EVENTS:
        schemas.validate("CreateTranscriptionResponseStreamEvent", event)


def test_images_generate_and_edit(client, upstream, schemas):
    generated = client.images.generate(model=MODEL, prompt="a red dot")
    assert base64.b64decode(generated.data[0].b64_json) == PNG
    schemas.validate("ImagesResponse", generated.model_dump(mode="json", exclude_unset=True))
    edited = client.images.edit(model=MODEL, image=("dot.png", PNG, "image/png"), prompt="make it blue")
    assert base64.b64decode(edited.data[0].b64_json) == PNG
    path, content_type, raw = last(upstream)
    form = read_form(raw, content_type)
    assert (path, form.fields["prompt"]) == ("/v1/images/edits", "make it blue")
    assert PNG in raw  # the upload itself, unchanged


def test_moderations(client, upstream, schemas):
    moderation = client.moderations.create(model=MODEL, input="something violent")
    assert moderation.results[0].flagged and moderation.results[0].categories.violence
    assert orjson.loads(SURFACE["/v1/moderations"]) == moderation.model_dump(mode="json", by_alias=True,
                                                                             exclude_unset=True)
    schemas.validate("CreateModerationResponse", orjson.loads(SURFACE["/v1/moderations"]))


@pytest.mark.parametrize("path, body", [
    ("/rerank", {"query": "b?", "documents": ["a", "b"], "top_n": 2}),
    ("/score", {"text_1": "a", "text_2": ["b"]}),
])
def test_rerank_and_score_bytes_pass_unchanged(url, client, upstream, path, body):
    raw = orjson.dumps({"model": MODEL, **body})
    answer = httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert (answer.status_code, answer.content) == (200, SURFACE["/v1" + path])
    assert last(upstream) == ("/v1" + path, "application/json", raw)
    assert client.post(path, body={"model": MODEL, **body}, cast_to=httpx.Response).json() == json.loads(answer.content)


def test_an_alias_renames_only_the_forms_model_field(url, upstream):
    request = httpx.Request("POST", f"{url}/audio/transcriptions", data={"model": ALIASED},
                            files={"file": ("a.wav", WAV)})
    raw = request.read()
    answer = httpx.post(request.url, content=raw, headers={"Content-Type": request.headers["content-type"]},
                        timeout=30)
    assert answer.status_code == 200
    assert last(upstream)[2] == raw.replace(ALIASED.encode(), UPSTREAM_NAME.encode())


# ---- bad input: OpenAI errors, and no hop ----------------------------------------------------------

def _form(fields: dict, files: dict | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=fields, files=files or {"file": ("a.wav", WAV)})
    return request.read(), request.headers["content-type"]


FORM_OK, FORM_TYPE = _form({"model": GHOST})
BAD_INPUT = [
    # (path, body, content type, status, code, param)
    ("/audio/speech", orjson.dumps({"input": "hi"}), "application/json", 400, "missing_required_parameter", "model"),
    ("/images/generations", orjson.dumps({"model": 5, "prompt": "x"}), "application/json", 400, "invalid_type", "model"),
    ("/responses", orjson.dumps({"model": GHOST, "input": 5}), "application/json", 400, "invalid_value", "input"),
    ("/rerank", orjson.dumps({"model": GHOST, "query": "q"}), "application/json", 400, "missing_required_parameter",
     "documents"),
    ("/audio/transcriptions", *_form({"language": "en"}), 400, "missing_required_parameter", "model"),
    ("/audio/transcriptions", *_form({}, {"model": ("m.txt", b"x"), "file": ("a.wav", WAV)}), 400, "invalid_type",
     "model"),
    ("/audio/translations", *_form({"model": GHOST}, {"other": ("a.wav", WAV)}), 400, "missing_required_parameter",
     "file"),
    ("/audio/transcriptions", orjson.dumps({"model": GHOST, "file": "x"}), "application/json", 400,
     "invalid_content_type", None),
    ("/images/edits", FORM_OK[: len(FORM_OK) // 2], FORM_TYPE, 400, "invalid_multipart", None),
    ("/images/edits", FORM_OK, "multipart/form-data", 400, "invalid_multipart", None),  # no boundary
    ("/responses", orjson.dumps({"model": GHOST, "input": "hi", "previous_response_id": "resp_1"}),
     "application/json", 400, "unsupported_parameter", "previous_response_id"),
]


@pytest.mark.parametrize("path, body, content_type, status, code, param", BAD_INPUT)
def test_bad_input_gets_an_openai_error_without_a_hop(url, schemas, path, body, content_type, status, code, param):
    answer = httpx.post(url + path, content=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == status, answer.text  # a hop to GHOST would be a 502
    schemas.validate("ErrorResponse", answer.json())
    assert (answer.json()["error"]["code"], answer.json()["error"]["param"]) == (code, param)


def test_an_oversize_upload_gets_413(url):
    raw, content_type = _form({"model": GHOST}, {"file": ("big.wav", bytes(25 * 1024 * 1024 + 1))})
    answer = httpx.post(f"{url}/audio/transcriptions", content=raw, headers={"Content-Type": content_type},
                        timeout=60)
    assert answer.status_code == 413  # a hop to GHOST would be a 502
    assert answer.json()["error"]["code"] == "request_too_large"


# ---- capabilities in the registration ---------------------------------------------------------------

def test_a_model_without_the_capability_is_refused_without_a_hop(client):
    with pytest.raises(openai.BadRequestError) as err:  # a hop to GHOST_CHAT would be a 502
        client.audio.speech.create(model=GHOST_CHAT, input="hi", voice="alloy")
    error = err.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_capability", "model")
    assert GHOST_CHAT in error["message"] and "/v1/audio/speech" in error["message"]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=GHOST_CHAT, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502  # what it claims is routed


def test_openai_worker_registers_what_capabilities_names(client, upstream):
    sent = len(upstream.received)
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model=CHAT_ONLY, file=("a.wav", WAV))
    assert "/v1/audio/transcriptions" in err.value.message  # the wrapper's refusal (the worker names no path)
    assert len(upstream.received) == sent
    answer = client.chat.completions.create(model=CHAT_ONLY, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "fast answer"


def test_a_registration_without_capabilities_serves_chat_completions_embeddings(consul, url, wrapper, client):
    """A worker older than capabilities registers no caps tag: routed as before for chat (here to a port
    nothing listens on: 502), refused for the new endpoints before any hop."""
    legacy = unique_model("legacy")
    with registered(consul, unique_model("legacy-svc"), free_port(), legacy):
        wait_until(lambda: routable(wrapper, legacy), 15, f"{legacy} to be routable")
        with pytest.raises(openai.BadRequestError) as err:
            client.moderations.create(model=legacy, input="x")
        assert err.value.response.json()["error"]["code"] == "unsupported_capability"
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=legacy, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 502


# ---- stateful endpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/responses/resp_123"), ("DELETE", "/responses/resp_123"), ("POST", "/responses/resp_123/cancel"),
    ("GET", "/responses/resp_123/input_items"), ("GET", "/files"), ("POST", "/files"), ("GET", "/batches/b_1"),
    ("POST", "/conversations"), ("GET", "/chat/completions/chatcmpl-1"),
])
def test_stateful_endpoints_say_they_are_not_supported(url, schemas, method, path):
    answer = httpx.request(method, url + path, timeout=30)
    assert answer.status_code == 404
    schemas.validate("ErrorResponse", answer.json())
    assert answer.json()["error"]["code"] == "unsupported_endpoint"
    assert "not supported by this gateway" in answer.json()["error"]["message"]


def test_the_sdk_sees_a_clear_error_for_a_stored_response(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve("resp_123")
    assert "not supported by this gateway" in err.value.message
