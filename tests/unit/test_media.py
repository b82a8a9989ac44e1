"""The media endpoints' pure parts, in process: wire shapes (srt / vtt, moderation, rerank, score), form
field checks, the audio and PNG helpers, EchoGen's media methods and the Generator's media calls."""
from __future__ import annotations

import asyncio
import io
import struct
import wave
import zlib

import numpy as np
import pytest

from common import media_checks, media_wire
from common.errors import InvalidRequest
from common.wire import Capability
from generators._audio import decode_to_16k, wav_header
from generators._png import png
from generators.base import Generator
from generators.echo import EchoGen
from generators.espeak_tts import _fixed_wav, _resample_pcm, _voice_names

SEGMENTS = [{"start": 0.0, "end": 1.5, "text": " Hello."}, {"start": 3661.25, "end": 3662.0, "text": "Bye."}]


def test_srt_numbers_cues_with_comma_milliseconds():
    assert media_wire.srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n"
                                        "2\n01:01:01,250 --> 01:01:02,000\nBye.\n\n")


def test_vtt_has_a_header_and_dot_milliseconds():
    assert media_wire.vtt(SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n\n"
                                        "01:01:01.250 --> 01:01:02.000\nBye.\n")


def test_a_plain_text_transcript_becomes_one_segment():
    parts = media_wire.transcript_parts("hi")
    assert parts["segments"] == [{"start": 0.0, "end": 0.0, "text": "hi"}]
    assert media_wire.verbose_transcript("transcribe", parts)["segments"][0]["id"] == 0


def test_a_transcript_without_text_is_the_generators_bug():
    with pytest.raises(TypeError):
        media_wire.transcript_parts({"language": "en"})


def test_moderation_lists_every_category():
    result = media_wire.moderation_result({"flagged": True, "categories": {"violence": True}})
    assert set(result["categories"]) == set(media_wire.MODERATION_CATEGORIES)
    assert result["categories"]["violence"] and not result["categories"]["hate"]
    assert result["category_applied_input_types"]["violence"] == ["text"]


def test_rerank_sorts_best_first_and_cuts_at_top_n():
    answer = media_wire.rerank_answer("m", ["a", "b", "c"], [0.1, 0.9, 0.5], 2, 3)
    assert [(r["index"], r["relevance_score"]) for r in answer["results"]] == [(1, 0.9), (2, 0.5)]
    assert len(media_wire.rerank_answer("m", ["a", "b", "c"], [0.1, 0.9, 0.5], None, 3)["results"]) == 3


@pytest.mark.parametrize("body, pairs", [
    ({"text_1": "q", "text_2": "d"}, [("q", ["d"])]),
    ({"text_1": "q", "text_2": ["d", "e"]}, [("q", ["d", "e"])]),
    ({"text_1": ["q"], "text_2": ["d", "e"]}, [("q", ["d", "e"])]),
    ({"text_1": ["q", "r"], "text_2": ["d", "e"]}, [("q", ["d"]), ("r", ["e"])]),
])
def test_score_pairs_as_vllm_does(body, pairs):
    assert media_wire.score_pairs(body) == pairs


def test_score_lists_of_different_lengths_are_refused():
    with pytest.raises(InvalidRequest):
        media_wire.score_pairs({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})


def test_form_fields_convert_what_openai_types():
    fields = media_checks.form_fields(Capability.TRANSCRIPTION, {"stream": "true", "temperature": "0.5", "model": "m"})
    assert fields == {"stream": True, "temperature": 0.5, "model": "m"}


@pytest.mark.parametrize("capability, fields, param", [
    (Capability.TRANSCRIPTION, {"stream": "perhaps"}, "stream"),
    (Capability.TRANSCRIPTION, {"temperature": "2"}, "temperature"),
    (Capability.TRANSLATION, {"response_format": "mp3"}, "response_format"),
    (Capability.IMAGE_EDIT, {"n": "1.5"}, "n"),
    (Capability.IMAGE_EDIT, {"n": "11"}, "n"),
])
def test_form_fields_refuse_bad_values_naming_them(capability, fields, param):
    with pytest.raises(InvalidRequest) as err:
        media_checks.form_fields(capability, fields)
    assert err.value.param == param


def test_a_wav_header_frames_the_samples():
    data = wav_header(8000, 4) + bytes(8)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (8000, 4, 2)


def test_decoding_resamples_to_16khz_mono():
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(struct.pack("<4000h", *([1000, 3000] * 2000)))  # 0.25 s, channels averaging 2000
    samples, duration = decode_to_16k(buffer.getvalue())
    assert duration == pytest.approx(0.25)
    assert len(samples) == 4000
    assert np.allclose(samples, 2000 / 32768)


def test_a_non_wav_upload_without_ffmpeg_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(InvalidRequest) as err:
        decode_to_16k(b"ID3 not a wav")
    assert "ffmpeg" in err.value.message and err.value.param == "file"


def test_espeaks_streaming_header_gets_its_real_sizes():
    streaming = bytearray(wav_header(22050, 0))
    streaming[4:8] = streaming[40:44] = b"\x00\xf0\xff\x7f"  # as espeak-ng --stdout writes it
    with wave.open(io.BytesIO(_fixed_wav(bytes(streaming) + bytes(22050 * 2)))) as w:
        assert w.getnframes() == 22050


def test_pcm_is_resampled_to_the_target_rate():
    assert len(_resample_pcm(bytes(2 * 22050), 22050, 24000)) == 2 * 24000


def test_espeak_voice_listing_gives_codes_and_names():
    listing = ("Pty Language       Age/Gender VoiceName          File                 Other Languages\n"
               " 2  en-us           --/M      English_(America)  gmw/en-US            (en 3)\n")
    assert _voice_names(listing) == ["en-us", "English_(America)"]


def test_png_is_valid():
    data = png(3, 2, lambda x, y: (x, y, 0))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    assert zlib.decompress(data[idat + 4: idat + 4 + length]) == b"\x00" + bytes([0, 0, 0, 1, 0, 0, 2, 0, 0]) + \
        b"\x00" + bytes([0, 1, 0, 1, 1, 0, 2, 1, 0])


def test_echo_speech_length_follows_the_input():
    async def wav(text: str) -> bytes:
        return b"".join([c async for c in EchoGen().speech_chunks({"input": text, "response_format": "wav"})])

    short, long = asyncio.run(wav("ab")), asyncio.run(wav("abcd"))
    with wave.open(io.BytesIO(short)) as a, wave.open(io.BytesIO(long)) as b:
        assert 2 * a.getnframes() == b.getnframes() > 0


def test_echo_embeddings_honour_dimensions():
    vectors = asyncio.run(EchoGen().embed({"input": ["x"], "dimensions": 8}))
    assert len(vectors[0]) == 8


def test_echo_moderation_uses_its_flag_word():
    results = asyncio.run(EchoGen(flag_word="Plum").moderate({"input": ["a plum", "a pear"]}))
    assert [r["flagged"] for r in results] == [True, False]


class Plain(Generator):
    """Plain (blocking) media methods: the worker runs them in threads."""

    models = ("p",)

    def speech(self, request):
        return iter([b"a", b"b"])

    def rerank(self, request):
        return [1.0]


def test_plain_media_methods_are_called_and_checked():
    gen = Plain()
    assert gen.supports(Capability.SPEECH) and gen.supports(Capability.SCORE)
    assert not gen.supports(Capability.TRANSCRIPTION)

    async def run():
        return [c async for c in gen.speech_chunks({})], await gen.relevance({"query": "q", "documents": ["d"]})

    assert asyncio.run(run()) == ([b"a", b"b"], [1.0])
    with pytest.raises(RuntimeError, match="1 scores for 2 documents"):
        asyncio.run(gen.relevance({"query": "q", "documents": ["d", "e"]}))


def test_a_form_is_parsed_in_memory_with_array_fields_as_lists(monkeypatch):
    import tempfile

    from starlette.requests import Request

    from worker.media import _parse_form

    boundary = "b0und"
    parts = [('name="model"', "m"), ('name="timestamp_granularities[]"', "word"),
             ('name="timestamp_granularities[]"', "segment"), ('name="file"; filename="a.wav"', "x" * 3_000_000)]
    raw = "".join(f"--{boundary}\r\nContent-Disposition: form-data; {d}\r\n\r\n{v}\r\n" for d, v in parts)
    raw_bytes = (raw + f"--{boundary}--\r\n").encode()
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file on disk")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)  # a SpooledTemporaryFile's roll-over to disk
    upload = asyncio.run(_parse_form(Request(scope), raw_bytes, 10, 1024 * 1024))
    assert upload.fields == {"model": "m", "timestamp_granularities[]": ["word", "segment"]}
    assert upload.files == [("file", "a.wav", b"x" * 3_000_000)]
