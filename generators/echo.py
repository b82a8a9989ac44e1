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

from common.wire import message_text

from .base import Delta, Generator, Output, ToolCall, ToolCallDelta

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

    def __init__(self, models=None, delay: float = 0.0) -> None:
        super().__init__(models)
        self.delay = delay

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                            help="pause before each streamed word (for load and disconnect tests)")

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

    async def chat(self, request: dict[str, Any]) -> str | Output:
        call = tool_call(request)
        if call is not None:
            return Output(tool_calls=[call])
        return _tool_result(request) or self._last_user_text(request)

    async def chat_stream(self, request: dict[str, Any]) -> AsyncGenerator[str | Delta, None]:
        call = tool_call(request)
        if call is not None:
            yield Delta(tool_calls=[ToolCallDelta(index=0, id=call.id, name=call.name)])
            async for piece in self._words(call.arguments):
                yield Delta(tool_calls=[ToolCallDelta(index=0, arguments=piece)])
            return
        async for piece in self._words(_tool_result(request) or self._last_user_text(request)):
            yield piece

    async def completion(self, request: dict[str, Any]) -> str:
        return _prompt_text(request.get("prompt"))

    async def completion_stream(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        async for piece in self._words(_prompt_text(request.get("prompt"))):
            yield piece

    async def embed(self, request: dict[str, Any]) -> list[list[float]]:
        return [unit_vector(_as_text(item)) for item in request["input"]]


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
