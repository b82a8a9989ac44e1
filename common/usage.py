"""The token `usage` an answer reports, read from its bytes as they pass: a whole JSON answer, or the
chunks of an SSE stream (OpenAI puts usage in the last chunk, with `stream_options.include_usage`).

Cheap on purpose, since it runs on every answer the wrapper relays: a chunk is only searched for the
`"usage"` key, and only the usage object itself is parsed. The key cannot be forged by generated text:
inside a JSON string its quotes are escaped (`\\"usage\\"`)."""
from __future__ import annotations

import re
from typing import NamedTuple

import orjson

_KEY = b'"usage"'
# the usage object: flat, or with one level of nested details (prompt_tokens_details, ...)
_OBJECT = re.compile(rb'\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_NULL = re.compile(rb'\s*:\s*null')
MAX_PENDING = 8192  # bytes of an unfinished usage object kept across chunks; a longer one is not usage


class TokenUsage(NamedTuple):  # a tuple: made on every relayed answer, and a frozen dataclass costs 3x
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _parse(obj: bytes) -> TokenUsage | None:
    try:
        usage = orjson.loads(obj)
    except orjson.JSONDecodeError:
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        return None
    return TokenUsage(prompt, completion)


def from_json_answer(content: bytes) -> TokenUsage | None:
    """The usage of a whole JSON answer (chat, completion, embeddings); None if it reports none."""
    at = content.rfind(_KEY)
    if at < 0:
        return None
    start = at + len(_KEY)
    # the usual case first, a flat object: up to the first `}`, with nothing but `:` before its `{`
    brace, end = content.find(b"{", start), content.find(b"}", start)
    if 0 <= brace < end and content[start:brace].strip() == b":" and content.find(b"{", brace + 1, end) < 0:
        return _parse(content[brace:end + 1])
    match = _OBJECT.match(content, start)
    return _parse(match.group(1)) if match else None


class StreamUsage:
    """Fed each relayed SSE chunk in order; `usage` is the last usage object a chunk reported. An event
    split over chunks (even inside the key) is joined before it is read."""

    __slots__ = ("usage", "_pending")

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self._pending = b""  # the start of a usage object, or a tail that may hold the start of the key

    def feed(self, chunk: bytes) -> None:
        if self._pending:
            chunk, self._pending = self._pending + chunk, b""
        at = chunk.rfind(_KEY)
        if at < 0:
            if chunk[-1:] not in (b"", b"\n"):  # an event may end mid-key: keep what could be its start
                self._pending = chunk[-(len(_KEY) - 1):]
            return
        end = at + len(_KEY)
        match = _OBJECT.match(chunk, end)
        if match:
            self.usage = _parse(match.group(1)) or self.usage
        elif not _NULL.match(chunk, end) and len(chunk) - at <= MAX_PENDING and b"\n\n" not in chunk[end:]:
            self._pending = chunk[at:]  # the object goes on in the next chunk
