"""Tool calls in a local model's text, as OpenAI tool calls: the Hermes / Qwen convention

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

or the chat template's own tags (e.g. `<|tool_call|>` … `<|/tool_call|>`), a tag pair holding one call object or a
list of them. `ToolCallParser` reads the text as it streams: text outside the tags stays content (only a possible
partial tag is held back), a call's name is sent as soon as it is read, and its arguments as they come.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from .base import ACCEPTED, Delta, ToolCallDelta


@dataclass(frozen=True)
class Markers:
    start: str
    end: str


HERMES = Markers("<tool_call>", "</tool_call>")
_TEMPLATE_TAGS = re.compile(r"(<\|?tool_calls?\|?>).*?(</tool_calls?>|<\|/tool_calls?\|>)", re.DOTALL)

# a call object whose name comes first and whose arguments are an object: its arguments can stream
_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')
_CALL_END = re.compile(r"\s*\}?\s*$")  # what may close the call object: held back until more text shows


def markers_for(chat_template: str | None) -> Markers:
    """The chat template's own tool-call tags where it names a pair, else Hermes' `<tool_call>`."""
    found = _TEMPLATE_TAGS.search(chat_template or "")
    return Markers(found.group(1), found.group(2)) if found else HERMES


def wants_tool_calls(request: dict[str, Any]) -> bool:
    return bool(request.get("tools")) and request.get("tool_choice") != "none"


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (a tag that may be cut)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ToolCallParser:
    """Turns streamed text into Deltas of content and tool calls; `feed` each piece, then `finish`."""

    def __init__(self, markers: Markers = HERMES) -> None:
        self.markers = markers
        self.calls = 0  # tool calls sent so far
        self._in_call = False
        self._buffer = ""  # held text: a possible partial tag, or the call read so far
        self._space = ""  # whitespace after the last content: dropped if a call follows
        self._space_before_tag = ""  # given back if the tag holds no call
        self._name_sent = False
        self._args_start = 0
        self._args_sent = 0

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        self._buffer += text
        while True:
            marker = self.markers.end if self._in_call else self.markers.start
            found = self._buffer.find(marker)
            if found < 0:
                visible = len(self._buffer) - _partial_suffix(self._buffer, marker)
                if self._in_call:
                    out += self._call_progress(self._buffer[:visible])
                else:
                    out += self._text(self._buffer[:visible])
                    self._buffer = self._buffer[visible:]
                return out
            before, self._buffer = self._buffer[:found], self._buffer[found + len(marker):]
            if self._in_call:
                out += self._call_done(before)
            else:
                out += self._text(before)
                self._space_before_tag, self._space = self._space, ""  # the whitespace before a call is no content
                self._in_call, self._name_sent = True, False

    def finish(self) -> list[Delta]:
        """What is left when the model stops: an unclosed call is taken as it is, a partial tag is text."""
        out = self._call_done(self._buffer) if self._in_call else self._text(self._buffer)
        self._buffer = ""
        if self._space and not self.calls:
            out.append(Delta(content=self._space))
        self._space = ""
        return out

    def _text(self, text: str) -> list[Delta]:
        """Content, with trailing whitespace held until it is known not to come before a call."""
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        return [Delta(content=body)] if body else []

    def _call_progress(self, body: str) -> list[Delta]:
        out: list[Delta] = []
        if not self._name_sent:
            head = _NAME_FIRST.match(body)
            if head is None:
                return out  # not yet readable (or not streamable: sent whole when the call closes)
            self._name_sent, self._args_start, self._args_sent = True, head.end(), 0
            out.append(Delta(tool_calls=[ToolCallDelta(self.calls, new_call_id(), json.loads(f'"{head.group(1)}"'))]))
        region = body[self._args_start:]
        sendable = region[:_CALL_END.search(region).start()]  # type: ignore[union-attr]  # always matches
        out += self._arguments(sendable)
        return out

    def _arguments(self, text: str) -> list[Delta]:
        if len(text) <= self._args_sent:
            return []
        piece, self._args_sent = text[self._args_sent:], len(text)
        return [Delta(tool_calls=[ToolCallDelta(self.calls, arguments=piece)])]

    def _call_done(self, body: str) -> list[Delta]:
        self._in_call = False
        if self._name_sent:
            out = self._call_progress(body)  # the name came first: the arguments are the rest, less the `}`
            out += self._arguments(re.sub(r"\s*\}\s*$", "", body[self._args_start:]))
            self.calls += 1
            return out
        calls = _parse_calls(body)
        if calls is None:  # not a call after all: the model's text, tags and all
            return self._text(self._space_before_tag + self.markers.start + body + self.markers.end)
        out = []
        for name, arguments in calls:
            out.append(Delta(tool_calls=[ToolCallDelta(self.calls, new_call_id(), name, arguments)]))
            self.calls += 1
        return out


def _parse_calls(body: str) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call in a tag's body: one call object or a list of them; None if it is
    not that."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        calls.append((item["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
    return calls or None


async def with_tool_calls(deltas: AsyncGenerator[Delta, None], parser: ToolCallParser) -> AsyncGenerator[Delta, None]:
    """`deltas` (text) with the tool calls in it parsed out; an answer that made calls and stopped by itself
    finishes with "tool_calls". Closing this closes `deltas`."""
    async with aclosing(deltas):
        async for d in deltas:
            if d is ACCEPTED:
                yield d
                continue
            for out in parser.feed(d.content or ""):
                yield out
            if d.finish_reason is not None or d.usage is not None or d.tool_calls:
                if d.finish_reason is not None:
                    for out in parser.finish():
                        yield out
                reason = "tool_calls" if parser.calls and d.finish_reason == "stop" else d.finish_reason
                yield replace(d, content=None, finish_reason=reason)
