"""WhisperGen: transcription and translation with a transformers Whisper pipeline from a local folder, offline.

    python3 template_worker.py 127.0.0.1 9006 generators.whisper.WhisperGen --model-path /models/whisper-small

WAV uploads are decoded with the standard `wave` module and resampled to 16 kHz with numpy, so no ffmpeg is
needed for them; any other format is decoded by ffmpeg when it is on PATH, else the request gets a 400
naming it. `language` (an ISO code such as "en") and the endpoint's task (/translations: "translate") go
to the model; `prompt` is not used. One request at a time runs the model, in a worker thread.
"""
from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from ._audio import decode_to_16k
from .base import Generator


class WhisperGen(Generator):
    models = ("whisper",)
    service_name = "whisper"
    owned_by = "openai-whisper"

    def __init__(self, models: Sequence[str] | None = None, model_path: str | None = None, device: str = "cpu",
                 max_new_tokens: int = 128) -> None:
        if not model_path or not Path(model_path).is_dir():
            raise ValueError(f"--model-path {model_path}: no such folder (a local Whisper model is required)")
        super().__init__(models or [Path(model_path).name])
        self.model_path = model_path
        self.device = device
        self.max_new_tokens = max_new_tokens
        self._pipeline: Any = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model-path", required=True, metavar="DIR", help="a local Whisper model folder")
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                            help="at most this many tokens per 30-second chunk")

    async def startup(self) -> None:
        self._pipeline = await anyio.to_thread.run_sync(self._load)
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        from transformers import pipeline

        return pipeline("automatic-speech-recognition", model=self.model_path, device=self.device,
                        chunk_length_s=30)

    async def shutdown(self) -> None:
        self._pipeline = None

    async def transcribe(self, request: dict[str, Any], audio: bytes) -> dict[str, Any]:
        samples, duration = await anyio.to_thread.run_sync(decode_to_16k, audio)
        assert self._lock is not None, "startup() was not called"
        async with self._lock:  # the model uses every core already
            text = await anyio.to_thread.run_sync(self._recognize, samples, request)
        return {"text": text.strip(), "language": request.get("language") or "english", "duration": duration}

    def _recognize(self, samples: Any, request: dict[str, Any]) -> str:
        kwargs: dict[str, Any] = {"task": request.get("task", "transcribe"), "max_new_tokens": self.max_new_tokens}
        if request.get("language"):
            kwargs["language"] = request["language"]
        result = self._pipeline({"raw": samples, "sampling_rate": 16_000}, generate_kwargs=kwargs)
        return str(result["text"])
