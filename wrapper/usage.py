"""Token usage read from a worker's answer: a JSON body's `usage`, or a stream's usage chunk."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_USAGE = b'"usage"'


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _usage_of(obj: Any) -> TokenUsage | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return TokenUsage(prompt, completion)


def from_json_answer(content: bytes) -> TokenUsage | None:
    """The usage in a whole JSON answer; None if it has none (or is not JSON)."""
    if _USAGE not in content:
        return None
    try:
        return _usage_of(orjson.loads(content))
    except orjson.JSONDecodeError:
        return None


def usage_event(event: bytes) -> TokenUsage | None:
    """The usage of one SSE event (`data: {...}`), if it carries one."""
    if _USAGE not in event:
        return None
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    return _usage_of(orjson.loads(data))
                except orjson.JSONDecodeError:
                    return None
    return None


class StreamUsage:
    """Fed each relayed SSE chunk in order; `usage` is the last usage seen. Events without `"usage"` cost a
    substring search; an event split across chunks is kept until its end arrives."""

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self._partial = b""  # the unfinished event after the last blank line

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._partial = data
            return
        self._partial = data[end + 2:]
        complete = data[:end]
        if _USAGE in complete:
            for event in complete.split(b"\n\n"):
                usage = usage_event(event)
                if usage is not None:
                    self.usage = usage
