"""The Responses API (/v1/responses) served from any chat Generator, by translation: the request becomes a chat
request (common/responses_wire.chat_request), the Generator's chat answer becomes a Response object, and its
streamed deltas become the Responses event sequence, each event with the next `sequence_number`."""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from typing import Any

from common import responses_wire as rw
from common import wire
from common.wire import Capability
from generators import Delta, Generator, Output

from .answers import Answers

log = logging.getLogger(__name__)


class Responses:
    """Translates between the Responses API and one chat Generator."""

    def __init__(self, generator: Generator, answers: Answers) -> None:
        self.generator = generator
        self.answers = answers

    @staticmethod
    def translate(body: dict[str, Any]) -> dict[str, Any]:
        """The chat request for a checked Responses request (a 400 for what cannot be served)."""
        rw.check_request(body)
        return rw.chat_request(body)

    def input_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        rw.check_request(body)
        messages = rw.chat_messages(body["input"], body.get("instructions"))
        return rw.input_tokens(sum(self.generator.count_tokens(_message_text(m)) for m in messages))

    def whole(self, body: dict[str, Any], chat: dict[str, Any], out: Output) -> dict[str, Any]:
        status, reason = _status(out.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        items: list[dict[str, Any]] = []
        if out.text or not out.tool_calls:
            items.append(rw.message_item(rw.new_id("msg"), item_status, [rw.output_text(out.text or "")]))
        items += [rw.function_call_item(rw.new_id("fc"), c.id or wire.new_id("call"), c.name, c.arguments, "completed")
                  for c in out.tool_calls]
        created = wire.now()
        return rw.response(rw.new_id("resp"), created, body, status, items, self._usage(chat, out),
                           incomplete_reason=reason, completed_at=wire.now())

    def _usage(self, chat: dict[str, Any], out: Output) -> dict[str, Any]:
        counted = self.answers.usage(Capability.CHAT, chat, [out])
        return rw.usage(counted["prompt_tokens"], counted["completion_tokens"])

    async def events(self, body: dict[str, Any], chat: dict[str, Any], request_id: str,
                     slot: AbstractAsyncContextManager[Any]) -> AsyncGenerator[bytes, None]:
        """The whole event sequence. Nothing is sent before the Generator's first delta, so a failure up to
        then is a plain HTTP error; a failure after it ends the stream with `response.failed`."""
        stream = _EventStream(body)
        out = Output()
        started = False
        try:
            async with slot, aclosing(self.generator.stream(Capability.CHAT, chat)) as deltas:
                async for d in deltas:
                    if not started:
                        started = True
                        yield stream.opening()
                    for event in stream.feed(d, out):
                        yield event
                if not started:
                    yield stream.opening()
                yield stream.closing(out, self._usage(chat, out))
        except Exception as exc:
            if not started:
                raise
            log.error("request %s: generator failed mid-stream", request_id, exc_info=exc)
            yield stream.failed(exc)


def _message_text(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls") or ()
    return wire.message_text(message.get("content")) + "".join(c["function"]["arguments"] for c in calls)


def _status(finish_reason: str | None) -> tuple[str, str | None]:
    """A Response's status, and why it is incomplete, from the chat answer's finish_reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


@dataclass
class _Item:
    """The output item being streamed: a message (text) or a function call (`call` is the chat delta's index)."""

    output_index: int
    item_id: str
    call: int | None = None
    call_id: str = ""
    name: str = ""
    pieces: list[str] = field(default_factory=list)


class _EventStream:
    """The events of one streamed Response: numbered in order, one output item open at a time."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.id = rw.new_id("resp")
        self.created = wire.now()
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # the finished items
        self.open: _Item | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = rw.sse_named_event(kind, fields, self.sequence)
        self.sequence += 1
        return event

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return rw.response(self.id, self.created, self.body, status, list(self.output), **extra)

    def opening(self) -> bytes:
        return (self._event("response.created", response=self._response("in_progress"))
                + self._event("response.in_progress", response=self._response("in_progress")))

    def feed(self, d: Delta, out: Output) -> list[bytes]:
        out.finish_reason = d.finish_reason or out.finish_reason
        out.usage = d.usage or out.usage
        events: list[bytes] = []
        if d.content:
            out.text = (out.text or "") + d.content
            events += self._text(d.content)
        for piece in d.tool_calls or ():
            out.finish_reason = out.finish_reason or "tool_calls"
            events += self._call_piece(piece.index, piece.id, piece.name, piece.arguments)
        return events

    def _open_message(self) -> list[bytes]:
        events = self._close()
        item = self.open = _Item(len(self.output), rw.new_id("msg"))
        return [*events,
                self._event("response.output_item.added", output_index=item.output_index,
                            item=rw.message_item(item.item_id, "in_progress", [])),
                self._event("response.content_part.added", item_id=item.item_id, output_index=item.output_index,
                            content_index=0, part=rw.output_text(""))]

    def _text(self, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self.open is None or self.open.call is not None:
            events += self._open_message()
        item = self.open
        assert item is not None
        item.pieces.append(text)
        events.append(self._event("response.output_text.delta", item_id=item.item_id, output_index=item.output_index,
                                  content_index=0, delta=text, logprobs=[]))
        return events

    def _call_piece(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[bytes]:
        events: list[bytes] = []
        item = self.open
        if item is None or item.call != index:
            events += self._close()
            item = self.open = _Item(len(self.output), rw.new_id("fc"), call=index,
                                     call_id=call_id or wire.new_id("call"), name=name or "")
            events.append(self._event("response.output_item.added", output_index=item.output_index,
                                      item=rw.function_call_item(item.item_id, item.call_id, item.name, "",
                                                                 "in_progress")))
        if arguments:
            item.pieces.append(arguments)
            events.append(self._event("response.function_call_arguments.delta", item_id=item.item_id,
                                      output_index=item.output_index, delta=arguments))
        return events

    def _close(self, status: str = "completed") -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        joined = "".join(item.pieces)
        if item.call is not None:
            done = rw.function_call_item(item.item_id, item.call_id, item.name, joined, "completed")
            events = [self._event("response.function_call_arguments.done", item_id=item.item_id,
                                  output_index=item.output_index, name=item.name, arguments=joined)]
        else:
            part = rw.output_text(joined)
            done = rw.message_item(item.item_id, status, [part])
            events = [self._event("response.output_text.done", item_id=item.item_id, output_index=item.output_index,
                                  content_index=0, text=joined, logprobs=[]),
                      self._event("response.content_part.done", item_id=item.item_id,
                                  output_index=item.output_index, content_index=0, part=part)]
        self.output.append(done)
        events.append(self._event("response.output_item.done", output_index=item.output_index, item=done))
        return events

    def closing(self, out: Output, usage: dict[str, Any]) -> bytes:
        status, reason = _status(out.finish_reason)
        # an empty answer is still one message, as in a whole Response
        events = self._open_message() if not self.output and self.open is None else []
        events += self._close("completed" if status == "completed" else "incomplete")
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self._response(status, usage_=usage, incomplete_reason=reason,
                                                                 completed_at=wire.now())))
        return b"".join(events)

    def failed(self, exc: BaseException) -> bytes:
        return self._event("response.failed", response=self._response("failed", error=rw.response_error(exc)))
