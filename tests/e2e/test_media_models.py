"""The real local media Generators in real worker processes, called with the openai SDK straight at the
worker: espeak-ng speech, a Whisper pipeline (a tiny random-weight model built locally) and MiniLM rerank."""
from __future__ import annotations

import io
import signal
import wave

import httpx
import openai
import pytest

from tests.support import tiny_whisper_model
from tests.support.procs import wait_until
from tests.support.servers import Server, start_model_worker, unique_model

TTS = unique_model("espeak")
WHISPER = unique_model("whisper")
MINILM = unique_model("minilm-rerank")


def client_of(worker: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def workers(module_procs, consul, tmp_path_factory):
    """All three started without waiting (the Whisper model is built while the others load), then waited
    for; at the end all three are told to stop at once, so their shutdowns overlap too."""
    started = {
        "tts": start_model_worker(module_procs, consul, "generators.espeak_tts.EspeakTTSGen", "--models", TTS,
                                  wait=False),
        "minilm": start_model_worker(module_procs, consul, "generators.sentence_transformers.SentenceTransformerGen",
                                     "--models", MINILM, wait=False),
    }
    whisper_path = tiny_whisper_model.build(tmp_path_factory.mktemp("tiny-whisper"))
    started["whisper"] = start_model_worker(module_procs, consul, "generators.whisper.WhisperGen", "--models", WHISPER,
                                            "--model-path", str(whisper_path), "--max-new-tokens", "8", wait=False)
    for server in started.values():
        wait_until(lambda s=server: f"-127.0.0.1-{s.port}" in " ".join(consul.services()), 180,
                   f"worker on {server.port} to register\n{server.proc.output()}")
    yield started
    for server in started.values():
        server.proc.signal(signal.SIGTERM)  # module_procs then waits for each


def seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def speak(workers, text: str, **kwargs) -> bytes:
    with client_of(workers["tts"]) as client:
        return client.audio.speech.create(model=TTS, voice="alloy", input=text, response_format="wav", **kwargs).content


def test_espeak_speech_decodes_and_grows_with_the_input(workers):
    short = speak(workers, "Hello.")
    long = speak(workers, "Hello. This sentence is a good deal longer than the first one.")
    assert 0 < seconds(short) < seconds(long)


def test_espeak_speaks_a_text_that_looks_like_an_option(workers):
    assert seconds(speak(workers, "--version")) > 0.1  # as an argument, espeak-ng would print its version


def test_espeak_speed_shortens_the_speech(workers):
    text = "The quick brown fox jumps over the lazy dog."
    assert seconds(speak(workers, text, speed=2.0)) < seconds(speak(workers, text))


def test_espeak_pcm_is_24khz_16bit_samples(workers):
    wav = speak(workers, "Hello there.")
    with client_of(workers["tts"]) as client:
        pcm = client.audio.speech.create(model=TTS, voice="alloy", input="Hello there.", response_format="pcm")
    assert pcm.response.headers["content-type"] == "audio/pcm"
    assert len(pcm.content) // 2 / 24_000 == pytest.approx(seconds(wav), abs=0.01)


def test_espeak_mp3_without_ffmpeg_is_a_400_naming_it(workers):
    import shutil
    if shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is installed here")
    with client_of(workers["tts"]) as client, pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model=TTS, voice="alloy", input="hi", response_format="mp3")
    assert "ffmpeg" in err.value.response.json()["error"]["message"]


def test_an_unknown_espeak_voice_is_a_400(workers):
    with client_of(workers["tts"]) as client, pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model=TTS, voice="no-such-voice", input="hi", response_format="wav")
    assert err.value.response.json()["error"]["param"] == "voice"


def test_whisper_transcribes_a_wav_upload(workers):
    wav = speak(workers, "Hello there.")
    with client_of(workers["whisper"]) as client:
        transcript = client.audio.transcriptions.create(model=WHISPER, file=("hello.wav", wav), language="en")
        verbose = client.audio.translations.create(model=WHISPER, file=("hello.wav", wav),
                                                   response_format="verbose_json")
    assert isinstance(transcript.text, str) and transcript.text  # a random model: some text, not the words
    assert verbose.duration == pytest.approx(seconds(wav), abs=0.01)


def test_whisper_refuses_what_it_cannot_decode(workers):
    with client_of(workers["whisper"]) as client, pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model=WHISPER, file=("noise.wav", b"RIFF....WAVEnot really"))
    assert err.value.response.json()["error"]["param"] == "file"


def test_minilm_rerank_puts_the_relevant_document_first(workers):
    documents = ["The stock market fell sharply today.", "Knead the dough, let it rise, then bake the loaf.",
                 "Cats sleep for most of the day."]
    r = httpx.post(workers["minilm"].base_url + "/rerank", timeout=60,
                   json={"model": MINILM, "query": "How do I bake bread at home?", "documents": documents})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["index"] == 1
    assert results[0]["relevance_score"] > results[1]["relevance_score"] >= results[2]["relevance_score"]
