"""EchoGen: a deterministic model with no dependencies, for tests, demos and benchmarks."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import struct
from collections.abc import AsyncGenerator
from typing import Any

from common.errors import InvalidRequest
from common.media_wire import document_texts, moderation_inputs
from common.wire import message_text

from ._audio import PCM_RATE, wav_header
from ._png import PixelFn, png
from .base import Delta, Generator, Output, ToolCall, ToolCallDelta
from .prefix_cache import PrefixCache

DIMENSIONS = 64
SPEECH_MS_PER_CHARACTER = 50  # EchoGen's speech lasts this long per input character
SPEECH_CHUNK_FRAMES = 4800  # streamed in chunks of 0.2 s
IMAGE_SIDE = 8  # EchoGen's images are 8x8 pixels
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

    def __init__(self, models=None, delay: float = 0.0, flag_word: str = "forbidden", prefix_cache: int = 0,
                 prefill_ms_per_kchar: float = 0.0) -> None:
        super().__init__(models)
        self.delay = delay
        self.flag_word = flag_word.lower()
        self.cache = PrefixCache(prefix_cache) if prefix_cache > 0 else None
        self.prefill_ms_per_kchar = prefill_ms_per_kchar

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                            help="pause before each streamed word (for load and disconnect tests)")
        parser.add_argument("--flag-word", default="forbidden", metavar="WORD",
                            help="moderation flags (as harassment) every input containing this word")
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
        answer = _tool_result(request) or self._last_user_text(request)
        if self.cache is not None or self.prefill_ms_per_kchar:
            await self._prefill(_chat_prompt(request), _turn("assistant", answer))
        return answer

    async def _completion_answer(self, request: dict[str, Any]) -> str:
        answer = _prompt_text(request.get("prompt"))
        if self.cache is not None or self.prefill_ms_per_kchar:
            await self._prefill(answer, answer)
        return answer

    async def chat(self, request: dict[str, Any]) -> str | Output:
        call = tool_call(request)
        if call is not None:
            return Output(tool_calls=[call])
        return await self._chat_answer(request)

    async def chat_stream(self, request: dict[str, Any]) -> AsyncGenerator[str | Delta, None]:
        call = tool_call(request)
        if call is not None:
            yield Delta(tool_calls=[ToolCallDelta(index=0, id=call.id, name=call.name)])
            async for piece in self._words(call.arguments):
                yield Delta(tool_calls=[ToolCallDelta(index=0, arguments=piece)])
            return
        async for piece in self._words(await self._chat_answer(request)):
            yield piece

    async def completion(self, request: dict[str, Any]) -> str:
        return await self._completion_answer(request)

    async def completion_stream(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        async for piece in self._words(await self._completion_answer(request)):
            yield piece

    async def embed(self, request: dict[str, Any]) -> list[list[float]]:
        dimensions = int(request.get("dimensions") or DIMENSIONS)
        return [unit_vector(_as_text(item), dimensions) for item in request["input"]]

    # ---- media: deterministic stand-ins, so every endpoint is testable end to end ---------------

    async def speech(self, request: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """Silence lasting SPEECH_MS_PER_CHARACTER per input character: WAV (header first) or raw pcm,
        streamed in chunks."""
        fmt = request.get("response_format") or "mp3"
        if fmt not in ("wav", "pcm"):
            raise InvalidRequest(f"EchoGen speaks only 'wav' and 'pcm', not '{fmt}'.", param="response_format",
                                 code="unsupported_format")
        frames = len(request["input"]) * SPEECH_MS_PER_CHARACTER * PCM_RATE // 1000
        if fmt == "wav":
            yield wav_header(PCM_RATE, frames)
        for start in range(0, frames, SPEECH_CHUNK_FRAMES):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield bytes(2 * min(SPEECH_CHUNK_FRAMES, frames - start))

    async def transcribe(self, request: dict[str, Any], audio: bytes) -> dict[str, Any]:
        """A fixed text naming the upload's size, in two segments of a second each."""
        verb = "translated" if request.get("task") == "translate" else "transcribed"
        first, second = "echo heard", f"{len(audio)} bytes {verb}"
        return {"text": f"{first} {second}", "language": "english", "duration": 2.0,
                "segments": [{"start": 0.0, "end": 1.0, "text": first}, {"start": 1.0, "end": 2.0, "text": second}]}

    async def image(self, request: dict[str, Any], images: list[bytes]) -> list[bytes]:
        """`n` small PNGs, coloured by the prompt (and the uploads and mask, for an edit) and the image's index."""
        seed = hashlib.sha256(str(request.get("prompt", "")).encode() + b"".join(images)
                              + request.get("mask", b"")).digest()
        return [png(IMAGE_SIDE, IMAGE_SIDE, _gradient(seed[0] ^ i, seed[1], seed[2]))
                for i in range(int(request.get("n") or 1))]

    async def moderate(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Flags, as harassment, every input containing the flag word (--flag-word)."""
        results = []
        for text in moderation_inputs(request["input"]):
            hit = self.flag_word in text.lower()
            results.append({"flagged": hit, "categories": {"harassment": hit},
                            "category_scores": {"harassment": 1.0 if hit else 0.0}})
        return results

    async def rerank(self, request: dict[str, Any]) -> list[float]:
        """The share of the query's words each document contains."""
        query = set(request["query"].lower().split())
        return [len(query & set(doc.lower().split())) / (len(query) or 1)
                for doc in document_texts(request["documents"])]


def _gradient(red: int, green: int, blue: int) -> PixelFn:
    """A fixed red, green rising to the right, blue rising downwards."""
    return lambda x, y: (red, (green + 16 * x) % 256, (blue + 16 * y) % 256)


def tool_call(request: dict[str, Any]) -> ToolCall | None:
    """EchoGen's tool use, for function-call round trips: while the last message is the user's and the request
    offers a function tool (tool_choice not "none"), it calls the one tool_choice names, else the first, with
    the user's text as `{"text": ...}`. Once the result is in (the last message is a tool's), it answers with
    that result's text (`_tool_result`)."""
    messages = request.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    choice = request.get("tool_choice")
    if last.get("role") != "user" or choice == "none":
        return None
    names = [t["function"]["name"] for t in request.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
    function = choice.get("function") if isinstance(choice, dict) else None
    chosen = function.get("name") if isinstance(function, dict) else None
    name = chosen if chosen in names else (names[0] if names else None)
    if name is None:
        return None
    text = message_text(last.get("content"))
    call_id = "call_" + hashlib.sha256(f"{name}:{text}".encode()).hexdigest()[:24]
    return ToolCall(name=name, arguments=json.dumps({"text": text}), id=call_id)


def _tool_result(request: dict[str, Any]) -> str:
    messages = request.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return message_text(last.get("content")) if last.get("role") == "tool" else ""


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
