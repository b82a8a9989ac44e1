"""common/usage.py: the token usage read from answers as they pass (whole JSON, SSE chunks split anyhow)."""
from __future__ import annotations

import orjson
import pytest

from common import wire
from common.usage import StreamUsage, TokenUsage, from_json_answer


def _answer(prompt: int, completion: int, text: str = "hi") -> bytes:
    choices = [wire.chat_choice(0, wire.chat_message(text, None), "stop")]
    return wire.dumps(wire.chat_completion("chatcmpl-1", 1, "m", choices, wire.usage(prompt, completion)))


def test_json_answer_usage():
    assert from_json_answer(_answer(7, 3)) == TokenUsage(7, 3)


def test_json_answer_without_usage_is_none():
    assert from_json_answer(b'{"id": "x", "choices": []}') is None
    assert from_json_answer(b'{"usage": null}') is None


def test_embeddings_usage_has_no_completion_tokens():
    assert from_json_answer(b'{"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}}') == TokenUsage(5, 0)


def test_nested_details_are_read():
    raw = (b'{"usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13, '
           b'"prompt_tokens_details": {"cached_tokens": 2}}}')
    assert from_json_answer(raw) == TokenUsage(9, 4)


def test_generated_text_cannot_forge_usage():
    forged = 'x "usage": {"prompt_tokens": 999999, "completion_tokens": 999999}'
    assert from_json_answer(_answer(1, 2, forged)) == TokenUsage(1, 2)
    assert from_json_answer(wire.dumps({"choices": [{"message": {"content": forged}}]})) is None


@pytest.mark.parametrize("bad", [b'{"usage": {"prompt_tokens": "7"}}', b'{"usage": {"prompt_tokens": -1}}',
                                 b'{"usage": {"prompt_tokens": 1.5}}', b'{"usage": {broken}}'])
def test_malformed_usage_is_ignored(bad):
    assert from_json_answer(bad) is None


def _stream(include_usage: bool) -> bytes:
    events = [wire.sse_event({"choices": [{"delta": {"content": f"w{i} "}}], "usage": None}) for i in range(5)]
    if include_usage:
        events.append(wire.sse_event({"choices": [], "usage": wire.usage(11, 5)}))
    return b"".join(events) + wire.DONE_EVENT


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 10_000])
def test_stream_usage_whatever_the_chunking(size):
    raw = _stream(True)
    usage = StreamUsage()
    for i in range(0, len(raw), size):
        usage.feed(raw[i:i + size])
    assert usage.usage == TokenUsage(11, 5)


def test_stream_without_usage_chunk_has_none_and_keeps_little():
    usage = StreamUsage()
    raw = _stream(False)
    for i in range(0, len(raw), 3):
        usage.feed(raw[i:i + 3])
    assert usage.usage is None
    assert len(usage._pending) < 64


def test_an_endless_unclosed_usage_object_is_dropped():
    usage = StreamUsage()
    usage.feed(b'data: {"usage": {"prompt_tokens": 1, ' + b" " * 10_000)
    usage.feed(b'"completion_tokens": 2}}\n\n')
    assert usage.usage is None
    assert not usage._pending


def test_json_round_trip_with_orjson_spacing():
    raw = orjson.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, option=orjson.OPT_INDENT_2)
    assert from_json_answer(raw) == TokenUsage(3, 4)
