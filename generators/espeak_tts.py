"""EspeakTTSGen: text to speech with espeak-ng (the Debian package; scripts/system-packages.txt), offline.

    python3 template_worker.py 127.0.0.1 9005 generators.espeak_tts.EspeakTTSGen

`response_format` wav and pcm come from espeak-ng itself (pcm resampled to OpenAI's 24 kHz); mp3, opus, aac
and flac are converted by ffmpeg when it is on PATH, else the request gets a 400 naming ffmpeg. `voice`:
OpenAI's voice names (alloy, echo, ...) map to `--default-voice`; any espeak-ng voice name or language
code (`espeak-ng --voices`) is used as is. `speed` (0.25-4, OpenAI's range) scales espeak-ng's 175 words
per minute, within what espeak-ng accepts. espeak-ng runs as an asyncio subprocess, reading the text on
stdin (so a text starting with "-" is never an option), so the event loop stays free.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import struct
from collections.abc import Sequence
from typing import Any

from common.errors import InvalidRequest

from ._audio import PCM_RATE, ffmpeg_convert, wav_header, wav_to_pcm
from .base import Generator

OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                           "verse", "marin", "cedar"})
WORDS_PER_MINUTE = 175  # espeak-ng's default speed, OpenAI's speed 1.0
MIN_WPM, MAX_WPM = 80, 450  # what espeak-ng accepts


class EspeakTTSGen(Generator):
    models = ("espeak-tts",)
    service_name = "espeak-tts"
    owned_by = "espeak-ng"

    def __init__(self, models: Sequence[str] | None = None, default_voice: str = "en-us",
                 executable: str = "espeak-ng") -> None:
        super().__init__(models)
        self.default_voice = default_voice
        self.executable = executable
        self.voices: frozenset[str] = frozenset()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--default-voice", default="en-us", metavar="VOICE",
                            help="the espeak-ng voice OpenAI's voice names (alloy, echo, ...) map to")
        parser.add_argument("--executable", default="espeak-ng", metavar="PATH", help="the espeak-ng program")

    async def startup(self) -> None:
        """Find espeak-ng and learn its voices once, so a request's voice is checked without a subprocess."""
        path = shutil.which(self.executable)
        if path is None:
            raise ValueError(f"{self.executable} is not installed (apt-get install espeak-ng; "
                             "see scripts/system-packages.txt)")
        self.executable = path
        proc = await asyncio.create_subprocess_exec(path, "--voices", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        self.voices = frozenset(_voice_names(out.decode(errors="replace")))
        if self.default_voice not in self.voices:
            raise ValueError(f"--default-voice {self.default_voice}: espeak-ng has no such voice")

    def _voice(self, request: dict[str, Any]) -> str:
        voice = request.get("voice")
        if isinstance(voice, dict):
            voice = voice.get("id")
        if not voice or voice in OPENAI_VOICES:
            return self.default_voice
        if voice not in self.voices:
            raise InvalidRequest(f"Unknown voice '{voice}': use one of OpenAI's voice names or an espeak-ng voice.",
                                 param="voice", code="invalid_value")
        return str(voice)

    async def speech(self, request: dict[str, Any]) -> bytes:
        fmt = request.get("response_format") or "mp3"
        wpm = round(WORDS_PER_MINUTE * float(request.get("speed") or 1.0))
        wav = await self._speak(request["input"], self._voice(request), min(max(wpm, MIN_WPM), MAX_WPM))
        if fmt == "wav":
            return wav
        if fmt == "pcm":
            return _resample_pcm(*wav_to_pcm(wav), PCM_RATE)
        return await ffmpeg_convert(wav, fmt)

    async def _speak(self, text: str, voice: str, wpm: int) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            self.executable, "--stdin", "--stdout", "-v", voice, "-s", str(wpm),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await proc.communicate(text.encode())
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()  # the client went away: do not leave espeak-ng running
            raise
        if proc.returncode != 0 or len(out) < 44:
            raise RuntimeError(f"espeak-ng failed: {err.decode(errors='replace')[:200]}")
        return _fixed_wav(out)


def _voice_names(listing: str) -> list[str]:
    """The language codes and voice names in `espeak-ng --voices` output."""
    names = []
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 4:
            names += [cols[1], cols[3]]
    return names


def _fixed_wav(out: bytes) -> bytes:
    """espeak-ng writes a streaming header with placeholder sizes; give it the real ones, so every WAV
    reader sees the right duration."""
    channels, rate, _, _, bits = struct.unpack("<HIIHH", out[22:36])
    samples = out[44:]
    width = bits // 8
    return wav_header(rate, len(samples) // (channels * width), channels, width) + samples


def _resample_pcm(pcm: bytes, rate: int, target: int) -> bytes:
    """16-bit mono samples from `rate` to `target` Hz (linear interpolation)."""
    import numpy as np

    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    if rate == target or not len(samples):
        return samples.astype("<i2").tobytes()
    positions = np.arange(0, len(samples), rate / target)
    return np.interp(positions, np.arange(len(samples)), samples).round().astype("<i2").tobytes()
