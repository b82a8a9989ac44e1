"""The Generator adapters and EchoGen, in process (no HTTP)."""
from __future__ import annotations

import asyncio
import math

import pytest

from generators import Delta, Output, ToolCallDelta
from generators.echo import EchoGen, unit_vector, words_with_spacing
from tests.support.aio import collect
from tests.support.generators_for_tests import ChatOnlyGen, SyncStreamGen


def run(coro):
    return asyncio.run(coro)


def test_words_keep_spacing():
    text = "  leading and\ttabs\n\nnewlines  "
    pieces = words_with_spacing(text)
    assert "".join(pieces) == text
    assert len(pieces) == len(text.split())


def test_unit_vectors_are_deterministic_and_distinct():
    a, b = unit_vector("hello"), unit_vector("hello")
    assert a == b
    assert a != unit_vector("hellp")
    assert math.isclose(math.sqrt(sum(x * x for x in a)), 1.0)


def test_echo_chat_and_stream_agree():
    gen = EchoGen()
    request = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "no"},
                            {"role": "user", "content": [{"type": "text", "text": "multi part"}]}]}
    whole = run(gen.answer("chat", request))
    deltas = run(collect(gen.stream("chat", request)))
    assert whole.text == "multi part" == "".join(d.content for d in deltas)


def test_plain_chat_is_streamed_as_one_delta():
    deltas = run(collect(ChatOnlyGen().stream("chat", {"messages": []})))
    assert [d.content for d in deltas] == ["only chat"]


def test_sync_stream_is_joined_for_a_whole_answer():
    out = run(SyncStreamGen().answer("chat", {"messages": []}))
    assert out.text == "a b c" and out.tool_calls == []


def test_tool_call_deltas_join_into_calls():
    class ToolGen(EchoGen):
        async def chat_stream(self, request):
            yield Delta(tool_calls=[ToolCallDelta(index=0, id="call_1", name="get_weather", arguments='{"ci')])
            yield Delta(tool_calls=[ToolCallDelta(index=0, arguments='ty": "Oslo"}')])

    ToolGen.chat = None  # only the stream form
    out = run(ToolGen().answer("chat", {"messages": []}))
    assert out.text is None
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [("call_1", "get_weather", '{"city": "Oslo"}')]


def test_closing_a_stream_stops_the_generator():
    produced = []

    class Counting(EchoGen):
        async def chat_stream(self, request):
            for i in range(100):
                produced.append(i)
                yield f"{i} "
                await asyncio.sleep(0)

    async def main():
        stream = Counting().stream("chat", {"messages": []})
        await anext(stream)
        await anext(stream)
        await stream.aclose()

    run(main())
    assert produced == [0, 1]


def test_a_generator_without_models_is_refused():
    from generators import Generator

    class Nameless(Generator):
        def chat(self, request):
            return ""

    with pytest.raises(ValueError, match="serves no model"):
        Nameless()
    assert Nameless(models=["m"]).models == ("m",)
    assert Output(text="x").finish_reason is None
