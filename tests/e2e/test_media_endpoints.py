"""The media endpoints (speech, transcriptions, translations, images, moderations, rerank, score) of a real
EchoGen worker process, called with the current openai SDK straight at the worker and through a real
wrapper (every test runs both ways), answers checked against OpenAI's spec."""
from __future__ import annotations

import base64
import io
import struct
import wave
import zlib

import httpx
import openai
import pytest

from tests.support.procs import wait_until
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

MODEL = unique_model("echo-media")
MAX_UPLOAD = 64 * 1024  # the worker's limits.max_upload_bytes in this module


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = tmp_path_factory.mktemp("media") / "env.yaml"
    config.write_text(f"limits:\n  max_upload_bytes: {MAX_UPLOAD}\n")
    return config


@pytest.fixture(scope="module")
def worker(module_procs, consul, config):
    return start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", MODEL, "--config", str(config),
                        "--flag-word", "bananas")


@pytest.fixture(scope="module")
def wrapper(module_procs, consul, config, worker):
    wrapper = start_wrapper(module_procs, consul, "--config", str(config))
    wait_until(lambda: routable(wrapper, MODEL), 15, "the media model routable through the wrapper")
    return wrapper


@pytest.fixture(scope="module", params=["worker", "wrapper"])
def client(request):
    server = request.getfixturevalue(request.param)
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def a_wav(seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(bytes(int(32_000 * seconds)))
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and its header chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and struct.unpack(">I", data[16 + length:20 + length])[0] == zlib.crc32(data[12:16 + length])
    return struct.unpack(">II", data[16:24])


def error_of(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


# ---- speech ---------------------------------------------------------------------------------------------

def test_speech_is_a_wav_whose_length_follows_the_input(client):
    short = client.audio.speech.create(model=MODEL, voice="alloy", input="hi", response_format="wav")
    long = client.audio.speech.create(model=MODEL, voice="alloy", input="hello there, general", response_format="wav")
    assert short.response.headers["content-type"] == "audio/wav"
    assert 0 < wav_seconds(short.content) < wav_seconds(long.content)


def test_speech_streams_through_in_chunks(client):
    with client.audio.speech.with_streaming_response.create(model=MODEL, voice="alloy", input="x" * 100,
                                                             response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        chunks = list(response.iter_bytes(chunk_size=None))  # as they arrive
    assert len(b"".join(chunks)) == 100 * 50 * 24 * 2  # 50 ms per character at 24 kHz, 16 bits
    assert len(chunks) > 1


def test_speech_in_a_format_the_generator_cannot_make_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model=MODEL, voice="alloy", input="hi", response_format="mp3")
    assert error_of(err)["param"] == "response_format"


# ---- transcriptions and translations -------------------------------------------------------------------

def test_a_transcription_is_json_text_srt_and_vtt(client, schemas):
    audio = a_wav()
    raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=("a.wav", audio))
    schemas.validate("CreateTranscriptionResponseJson", raw.http_response.json())
    assert raw.parse().text == f"echo heard {len(audio)} bytes transcribed"
    text = client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio), response_format="text")
    assert text.strip() == f"echo heard {len(audio)} bytes transcribed"
    srt = client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,000\necho heard\n\n2\n00:00:01,000 --> 00:00:02,000\n")
    vtt = client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\necho heard\n")


def test_a_verbose_transcription_matches_the_spec(client, schemas):
    raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=("a.wav", a_wav()),
                                                               response_format="verbose_json")
    body = raw.http_response.json()
    schemas.validate("CreateTranscriptionResponseVerboseJson", body)
    assert [s["text"] for s in body["segments"]] == ["echo heard", f"{len(a_wav())} bytes transcribed"]


def test_a_streamed_transcription_sends_deltas_then_done(client, schemas):
    audio = a_wav()
    events = list(client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio), stream=True))
    for event in events:
        kind = "TranscriptTextDeltaEvent" if event.type == "transcript.text.delta" else "TranscriptTextDoneEvent"
        schemas.validate(kind, event.model_dump(exclude_none=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * 5 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == f"echo heard {len(audio)} bytes transcribed"


def test_a_translation_is_answered(client, schemas):
    raw = client.audio.translations.with_raw_response.create(model=MODEL, file=("a.wav", a_wav()))
    schemas.validate("CreateTranslationResponseJson", raw.http_response.json())
    assert raw.parse().text.endswith("bytes translated")
    verbose = client.audio.translations.with_raw_response.create(model=MODEL, file=("a.wav", a_wav()),
                                                                 response_format="verbose_json")
    schemas.validate("CreateTranslationResponseVerboseJson", verbose.http_response.json())


def test_an_oversize_upload_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", bytes(MAX_UPLOAD + 1)))
    assert err.value.status_code == 413
    assert error_of(err)["code"] == "request_too_large"


@pytest.mark.parametrize("fields, files, param", [
    ({}, {"file": ("a.wav", b"RIFF")}, "model"),  # no model
    ({"model": MODEL}, {}, "file"),  # no file
    ({"model": MODEL, "response_format": "mp4"}, {"file": ("a.wav", b"RIFF")}, "response_format"),
    ({"model": MODEL, "temperature": "warm"}, {"file": ("a.wav", b"RIFF")}, "temperature"),
    ({"model": MODEL, "stream": "maybe"}, {"file": ("a.wav", b"RIFF")}, "stream"),
])
def test_a_bad_transcription_request_names_the_field(worker, fields, files, param):
    files = files or {"other": ("x.txt", b"x")}  # still multipart, without the file
    r = httpx.post(worker.base_url + "/audio/transcriptions", data=fields, files=files, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_too_many_parts_is_a_400(worker):
    fields = {"model": MODEL, **{f"extra{i}": "x" for i in range(70)}}  # limits.max_upload_parts: 64
    r = httpx.post(worker.base_url + "/audio/transcriptions", data=fields, files={"file": ("a.wav", b"RIFF")},
                   timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_multipart"


def test_a_transcription_body_that_is_not_multipart_is_a_400(worker):
    r = httpx.post(worker.base_url + "/audio/transcriptions", json={"model": MODEL}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.audio.transcriptions.create(model="no-such-model", file=("a.wav", a_wav()))
    assert error_of(err)["code"] == "model_not_found"


# ---- images ---------------------------------------------------------------------------------------------

def test_images_are_generated_as_b64_pngs(client, schemas):
    raw = client.images.with_raw_response.generate(model=MODEL, prompt="a red cat", n=3)
    schemas.validate("ImagesResponse", raw.http_response.json())
    images = [base64.b64decode(d.b64_json) for d in raw.parse().data]
    assert len(images) == 3 and len(set(images)) == 3
    assert all(png_size(png) == (8, 8) for png in images)


def test_an_image_edit_takes_the_uploaded_image(client, schemas):
    original = base64.b64decode(client.images.generate(model=MODEL, prompt="a cat").data[0].b64_json)
    raw = client.images.with_raw_response.edit(model=MODEL, image=("cat.png", original), prompt="make it blue")
    schemas.validate("ImagesResponse", raw.http_response.json())
    edited = base64.b64decode(raw.parse().data[0].b64_json)
    assert png_size(edited) == (8, 8) and edited != original


def test_an_image_edit_hands_the_mask_to_the_generator(client):
    """EchoGen colours an edit by its uploads and mask: the same edit with a mask comes out different."""
    original = base64.b64decode(client.images.generate(model=MODEL, prompt="a cat").data[0].b64_json)
    plain = client.images.edit(model=MODEL, image=("cat.png", original), prompt="make it blue").data[0].b64_json
    masked = client.images.edit(model=MODEL, image=("cat.png", original), mask=("mask.png", original),
                                prompt="make it blue").data[0].b64_json
    assert masked != plain


@pytest.mark.parametrize("body, param", [({"prompt": "x"}, "model"), ({"model": MODEL}, "prompt"),
                                         ({"model": MODEL, "prompt": 5}, "prompt"),
                                         ({"model": MODEL, "prompt": "x", "n": "two"}, "n"),
                                         ({"model": MODEL, "prompt": "x", "response_format": "url"},
                                          "response_format")])
def test_a_bad_image_request_names_the_field(worker, body, param):
    r = httpx.post(worker.base_url + "/images/generations", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# ---- moderations ----------------------------------------------------------------------------------------

def test_moderation_flags_the_configured_word(client, schemas):
    raw = client.moderations.with_raw_response.create(model=MODEL, input=["a nice day", "I hate BANANAS"])
    schemas.validate("CreateModerationResponse", raw.http_response.json())
    results = raw.parse().results
    assert [r.flagged for r in results] == [False, True]
    assert results[1].categories.harassment and not results[1].categories.violence


def test_a_moderation_input_of_the_wrong_type_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.moderations.create(model=MODEL, input=5)  # type: ignore[arg-type]
    assert error_of(err)["param"] == "input"


# ---- rerank and score -----------------------------------------------------------------------------------

DOCUMENTS = ["the blue sky", "a red cat sat", "red wine"]


def test_rerank_orders_by_relevance_and_honours_top_n(client):
    answer = client.post("/rerank", cast_to=httpx.Response,
                         body={"model": MODEL, "query": "red cat", "documents": DOCUMENTS, "top_n": 2}).json()
    assert [r["index"] for r in answer["results"]] == [1, 2]
    assert [r["relevance_score"] for r in answer["results"]] == [1.0, 0.5]
    assert answer["results"][0]["document"] == {"text": "a red cat sat"}


def test_score_pairs_one_text_with_each(client):
    answer = client.post("/score", cast_to=httpx.Response,
                         body={"model": MODEL, "text_1": "red cat", "text_2": DOCUMENTS}).json()
    assert answer["object"] == "list"
    assert [(d["index"], d["object"], d["score"]) for d in answer["data"]] == [(0, "score", 0.0), (1, "score", 1.0),
                                                                                (2, "score", 0.5)]


@pytest.mark.parametrize("path, body, param", [
    ("/rerank", {"model": MODEL, "documents": ["a"]}, "query"),
    ("/rerank", {"model": MODEL, "query": "a", "documents": "a"}, "documents"),
    ("/rerank", {"query": "a", "documents": ["a"]}, "model"),
    ("/score", {"model": MODEL, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, "text_1"),
    ("/rerank", {"model": MODEL, "query": "a", "documents": ["a"] * 2049}, "documents"),  # limits.max_embedding_inputs
    ("/score", {"model": MODEL, "text_1": "a", "text_2": ["a"] * 2049}, "text_2"),
])
def test_a_bad_rerank_or_score_request_names_the_field(worker, path, body, param):
    r = httpx.post(worker.base_url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# ---- embeddings -----------------------------------------------------------------------------------------

def test_echo_embeddings_honour_dimensions(client):
    assert len(client.embeddings.create(model=MODEL, input="hi", dimensions=8).data[0].embedding) == 8


# ---- a speech stream the client leaves ------------------------------------------------------------------

def test_a_speech_stream_the_client_leaves_frees_its_slot(procs, consul, tmp_path):
    """With one slot and no queue, a second request is served only if the abandoned stream gave its slot
    back (else: 429 worker_busy)."""
    config = tmp_path / "env.yaml"
    config.write_text("worker:\n  max_queue: 0\n")
    model = unique_model("echo-slow-speech")
    slow = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--max-concurrency", "1",
                        "--config", str(config), "--delay", "0.5")
    body = {"model": model, "voice": "alloy", "input": "x" * 200, "response_format": "pcm"}  # 50 chunks, 25 s
    with httpx.stream("POST", slow.base_url + "/audio/speech", json=body, timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: a dropped iterator closes the response
        next(chunks)
        busy = httpx.post(slow.base_url + "/audio/speech", json=body, timeout=30)
        assert busy.status_code == 429  # the stream holds the only slot while it runs
    short = {**body, "input": "x"}

    def served() -> bool:
        return httpx.post(slow.base_url + "/audio/speech", json=short, timeout=30).status_code == 200

    wait_until(served, 15, "the abandoned stream's slot to be freed")
