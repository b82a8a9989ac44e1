"""EchoGen: a deterministic model with no dependencies, for tests, demos and benchmarks."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import re
import struct
from collections.abc import AsyncGenerator
from typing import Any

from common.wire import message_text

from .base import Generator
from .prefix_cache import PrefixCache

DIMENSIONS = 64
_WORD = re.compile(r"\s*\S+\s*|\s+")


def words_with_spacing(text: str) -> list[str]:
    """Split into one piece per word, keeping all whitespace, so the pieces join back to `text`."""
    return _WORD.findall(text)


def unit_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A deterministic unit vector: the same text always maps to the same vector."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: 4 * dimensions])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class EchoGen(Generator):
    models = ("echo",)
    service_name = "echo"

    def __init__(self, models=None, delay: float = 0.0, prefix_cache: int = 0,
                 prefill_ms_per_kchar: float = 0.0) -> None:
        super().__init__(models)
        self.delay = delay
        self.cache = PrefixCache(prefix_cache) if prefix_cache > 0 else None
        self.prefill_ms_per_kchar = prefill_ms_per_kchar

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                            help="pause before each streamed word (for load and disconnect tests)")
        parser.add_argument("--prefix-cache", type=int, default=0, metavar="N",
                            help="simulate an engine's prefix cache holding the last N sequences (prompt + "
                            "answer); its hits and misses show in /health (with the worker secret)")
        parser.add_argument("--prefill-ms-per-kchar", type=float, default=0.0, metavar="MS",
                            help="pause this long per 1000 characters of the prompt not in the prefix cache")

    def stats(self) -> dict[str, Any] | None:
        return self.cache.stats() if self.cache is not None else None

    async def _prefill(self, prompt: str, answer: str) -> None:
        """Simulate an engine's prefill: time for the prompt's uncached part; then cache prompt + answer."""
        uncached = len(prompt) - (self.cache.lookup(prompt) if self.cache is not None else 0)
        if self.prefill_ms_per_kchar and uncached:
            await asyncio.sleep(uncached * self.prefill_ms_per_kchar / 1e6)
        if self.cache is not None:
            self.cache.store(prompt + answer)

    def _last_user_text(self, request: dict[str, Any]) -> str:
        for message in reversed(request.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return message_text(message.get("content"))
        return ""

    async def _words(self, text: str) -> AsyncGenerator[str, None]:
        for piece in words_with_spacing(text):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield piece

    async def _chat_answer(self, request: dict[str, Any]) -> str:
        answer = self._last_user_text(request)
        if self.cache is not None or self.prefill_ms_per_kchar:
            await self._prefill(_chat_prompt(request), _turn("assistant", answer))
        return answer

    async def _completion_answer(self, request: dict[str, Any]) -> str:
        answer = _prompt_text(request.get("prompt"))
        if self.cache is not None or self.prefill_ms_per_kchar:
            await self._prefill(answer, answer)
        return answer

    async def chat(self, request: dict[str, Any]) -> str:
        return await self._chat_answer(request)

    async def chat_stream(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        async for piece in self._words(await self._chat_answer(request)):
            yield piece

    async def completion(self, request: dict[str, Any]) -> str:
        return await self._completion_answer(request)

    async def completion_stream(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        async for piece in self._words(await self._completion_answer(request)):
            yield piece

    async def embed(self, request: dict[str, Any]) -> list[list[float]]:
        return [unit_vector(_as_text(item)) for item in request["input"]]


def _turn(role: Any, text: str) -> str:
    return f"<|{role}|>{text}"


def _chat_prompt(request: dict[str, Any]) -> str:
    """The messages as one text, as an engine's chat template makes them: a turn's answer, appended as an
    assistant turn, is exactly what the next turn's prompt holds up to its new message."""
    return "".join(_turn(m.get("role"), message_text(m.get("content")))
                   for m in request.get("messages") or [] if isinstance(m, dict))


def _as_text(item: Any) -> str:
    """Text as is; a token (EchoGen has no tokenizer) or a token array as its numbers. A token may come
    as 2.0 or as a float too large for 64 bits: the spec counts both as integers."""
    if isinstance(item, str):
        return item
    if isinstance(item, list):
        return " ".join(map(str, item))
    return str(item)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and not any(isinstance(p, (str, list)) for p in prompt):
        return _as_text(prompt)
    return "".join(_as_text(p) for p in prompt) if isinstance(prompt, list) else ""
