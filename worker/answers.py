"""A Generator's outputs as OpenAI answers: whole completions, and the SSE events of a stream."""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

from common import wire
from common.wire import Capability
from generators import ACCEPTED, Delta, Generator, Output

log = logging.getLogger(__name__)

# Yielded for ACCEPTED: an empty body write, which sends the response's head at once (common/protocol.py
# holds a head until the first body write) and nothing else
HEAD_NOW = b""


class Answers:
    """Shapes one Generator's answers; usage falls back to its `count_tokens` where it reports none."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def count(self, text_or_tokens: str | list[int]) -> int:
        if isinstance(text_or_tokens, list):
            return len(text_or_tokens)
        return self.generator.count_tokens(text_or_tokens)

    def _prompt_tokens(self, capability: Capability, body: dict[str, Any]) -> int:
        if capability is Capability.CHAT:
            return sum(self.generator.count_tokens(wire.message_text(m.get("content"))) for m in body["messages"])
        return sum(map(self.count, wire.embedding_inputs(body["prompt"])))

    def usage(self, capability: Capability, body: dict[str, Any], outs: list[Output]) -> dict[str, int]:
        prompt = next((o.usage.prompt_tokens for o in outs if o.usage), None)
        if prompt is None:
            prompt = self._prompt_tokens(capability, body)
        completion = sum(o.usage.completion_tokens if o.usage else self.generator.count_tokens(o.text or "")
                         for o in outs)
        return wire.usage(prompt, completion)

    def whole(self, capability: Capability, body: dict[str, Any], model: str, outs: list[Output]) -> dict:
        usage = self.usage(capability, body, outs)
        if capability is Capability.CHAT:
            choices = [wire.chat_choice(i, wire.chat_message(o.text, _tool_calls(o) or None), _finish(o))
                       for i, o in enumerate(outs)]
            return wire.chat_completion(wire.new_id("chatcmpl"), wire.now(), model, choices, usage)
        choices = [wire.text_choice(i, o.text or "", _finish(o)) for i, o in enumerate(outs)]
        return wire.text_completion(wire.new_id("cmpl"), wire.now(), model, choices, usage)

    async def events(self, capability: Capability, body: dict[str, Any], model: str, request_id: str,
                     slot: AbstractAsyncContextManager[Any]) -> AsyncGenerator[bytes, None]:
        """SSE events for a whole stream: one id, exactly one finish_reason per choice, [DONE] last.
        `slot` (the worker's concurrency slot) is held by the stream itself, so it is freed however the
        stream ends."""
        shape = _StreamShape(capability, model)
        started = False
        try:
            async with slot:
                outs: list[Output] = []
                for index in range(wire.choice_count(body)):
                    async with aclosing(self._choice_events(shape, index, capability, body, outs)) as events:
                        async for event in events:
                            started = True
                            yield event
                if wire.include_usage(body):
                    yield shape.usage_chunk(self.usage(capability, body, outs))
                yield wire.DONE_EVENT
        except Exception as exc:
            if not started:
                raise
            # the status line is gone: end with an error event and no [DONE], so the client sees the cut
            log.error("request %s: generator failed mid-stream", request_id, exc_info=exc)
            yield wire.sse_error_event(exc)

    async def _choice_events(self, shape: _StreamShape, index: int, capability: Capability, body: dict[str, Any],
                             outs: list[Output]) -> AsyncGenerator[bytes, None]:
        out = Output()
        text: list[str] = []
        first = True
        async with aclosing(self.generator.stream(capability, body)) as deltas:
            async for d in deltas:
                if d is ACCEPTED:
                    if index == 0 and first:
                        yield HEAD_NOW
                    continue
                out.finish_reason = d.finish_reason or out.finish_reason
                out.usage = d.usage or out.usage
                if not d.content and not d.tool_calls:
                    continue
                if d.tool_calls:
                    out.finish_reason = out.finish_reason or "tool_calls"
                text.append(d.content or "")
                yield shape.chunk(index, d, first)
                first = False
        out.text = "".join(text)
        outs.append(out)
        yield shape.final_chunk(index, out.finish_reason or "stop", first)


class _StreamShape:
    """The chunks of one stream: chat.completion.chunk or text_completion, one id and timestamp."""

    def __init__(self, capability: Capability, model: str) -> None:
        self.chat = capability is Capability.CHAT
        self.id = wire.new_id("chatcmpl" if self.chat else "cmpl")
        self.created = wire.now()
        self.model = model

    def _event(self, choices: list[dict], usage: dict | None = None) -> bytes:
        build = wire.chat_chunk if self.chat else wire.text_completion
        return wire.sse_event(build(self.id, self.created, self.model, choices, usage))

    def chunk(self, index: int, d: Delta, first: bool) -> bytes:
        if self.chat:
            return self._event([wire.chat_chunk_choice(index, _chat_delta(d, first), None)])
        return self._event([wire.text_choice(index, d.content or "", None)])

    def final_chunk(self, index: int, finish_reason: str, nothing_sent: bool) -> bytes:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if nothing_sent else {}
            return self._event([wire.chat_chunk_choice(index, delta, finish_reason)])
        return self._event([wire.text_choice(index, "", finish_reason)])

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        return self._event([], usage)


def _chat_delta(d: Delta, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if d.content:
        delta["content"] = d.content
    if d.tool_calls:
        delta["tool_calls"] = [wire.tool_call_delta(t.index, t.id, t.name, t.arguments) for t in d.tool_calls]
    return delta


def _tool_calls(out: Output) -> list[dict[str, Any]]:
    return [wire.tool_call(c.id or wire.new_id("call"), c.name, c.arguments) for c in out.tool_calls]


def _finish(out: Output) -> str:
    return out.finish_reason or ("tool_calls" if out.tool_calls else "stop")
