"""Audio helpers the Generators share: WAV framing with the standard library, decoding to 16 kHz mono for
speech recognition, and conversion through ffmpeg when it is installed."""
from __future__ import annotations

import asyncio
import io
import shutil
import struct
import wave

from common.errors import InvalidRequest

PCM_RATE = 24_000  # OpenAI's `pcm`: 24 kHz, 16-bit signed little-endian, mono


def wav_header(sample_rate: int, frames: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """The 44-byte RIFF header of a PCM WAV file holding `frames` frames, so the samples can follow in
    chunks as they are produced."""
    data = frames * channels * sample_width
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * channels * sample_width,
                                    channels * sample_width, 8 * sample_width)
            + b"data" + struct.pack("<I", data))


def wav_to_pcm(wav_bytes: bytes) -> tuple[bytes, int]:
    """The samples of a WAV file and its rate."""
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def _is_wav(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def decode_to_16k(audio: bytes) -> tuple[object, float]:
    """Mono float32 samples at 16 kHz (numpy array) and the duration in seconds. WAV is decoded with the
    `wave` module; any other format needs ffmpeg (InvalidRequest naming it when it is missing)."""
    import numpy as np

    if not _is_wav(audio):
        audio = ffmpeg_to_wav_sync(audio)
    try:
        with wave.open(io.BytesIO(audio)) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, ValueError, RuntimeError) as exc:  # what `wave` raises for a garbled file
        raise InvalidRequest(f"The uploaded WAV file cannot be decoded: {exc}.", param="file",
                             code="invalid_audio") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2.0**31)}
    if width not in kinds:
        raise InvalidRequest(f"WAV files with {8 * width}-bit samples are not supported.", param="file",
                             code="invalid_audio")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - offset) / scale
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    duration = len(samples) / rate if rate else 0.0
    if rate != 16_000 and len(samples):
        # linear interpolation: good enough for speech recognition, and no resampling library needed
        target = np.arange(0, len(samples), rate / 16_000, dtype=np.float64)
        samples = np.interp(target, np.arange(len(samples)), samples).astype(np.float32)
    return samples, duration


FFMPEG_MISSING = "ffmpeg is not installed on this worker"


def ffmpeg_to_wav_sync(audio: bytes) -> bytes:
    import subprocess

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise InvalidRequest(f"Only WAV uploads can be decoded: {FFMPEG_MISSING}.", param="file",
                             code="unsupported_format")
    done = subprocess.run([ffmpeg, "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "16000", "-f", "wav", "pipe:1"],
                          input=audio, capture_output=True, check=False)
    if done.returncode != 0:
        raise InvalidRequest("The uploaded audio cannot be decoded.", param="file", code="invalid_audio")
    return done.stdout


async def ffmpeg_convert(wav_bytes: bytes, fmt: str) -> bytes:
    """WAV to mp3 / opus / aac / flac with ffmpeg, off the event loop; InvalidRequest naming ffmpeg when it
    is not installed."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise InvalidRequest(f"response_format '{fmt}' needs ffmpeg, which is not installed on this worker; "
                             "use 'wav' or 'pcm'.", param="response_format", code="unsupported_format")
    container = {"opus": "ogg", "aac": "adts"}.get(fmt, fmt)
    codec = {"opus": ["-c:a", "libopus"]}.get(fmt, [])
    proc = await asyncio.create_subprocess_exec(ffmpeg, "-v", "error", "-i", "pipe:0", *codec, "-f", container,
                                                "pipe:1", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(wav_bytes)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {err.decode(errors='replace')[:200]}")
    return out
