"""HFChatGen's tool-call parser (generators/tool_calls.py) on the token stream of the tiny tool model's
tokenizer (tests/support/tiny_tool_model.py), cut at every token boundary and at every character."""
from __future__ import annotations

import asyncio
import json

import pytest

from generators.base import Delta, _join
from generators.tool_calls import HERMES, Markers, ToolCallParser, markers_for, with_tool_calls
from tests.support import tiny_tool_model


@pytest.fixture(scope="module")
def token_pieces() -> list[str]:
    """The answer as the model streams it: each token decoded on its own."""
    tokenizer = tiny_tool_model.build_tokenizer()
    ids = tokenizer(tiny_tool_model.ANSWER, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) == tiny_tool_model.ANSWER and len(pieces) > 10
    return pieces


def parse(pieces: list[str], markers: Markers = HERMES) -> list[Delta]:
    parser = ToolCallParser(markers)
    out = [d for p in pieces for d in parser.feed(p)]
    return out + parser.finish()


def joined(deltas: list[Delta]) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) as a client assembles them; every call has an id."""
    content = "".join(d.content or "" for d in deltas)
    calls: dict[int, list[str]] = {}
    for d in deltas:
        for piece in d.tool_calls or ():
            if piece.index not in calls:
                assert piece.id and piece.id.startswith("call_") and piece.name, "a call's first piece names it"
                calls[piece.index] = [piece.name, ""]
            else:
                assert piece.id is None and piece.name is None
            calls[piece.index][1] += piece.arguments
    return content, [(name, args) for name, args in (calls[i] for i in sorted(calls))]


EXPECTED = (tiny_tool_model.CONTENT, tiny_tool_model.CALLS)


def test_the_tokens_stream_give_content_and_both_calls(token_pieces):
    deltas = parse(token_pieces)
    assert joined(deltas) == EXPECTED
    # the first call's arguments came in several pieces, as the tokens arrived
    first_call_args = [p.arguments for d in deltas for p in d.tool_calls or () if p.index == 0 and p.arguments]
    assert len(first_call_args) > 2
    assert json.loads("".join(first_call_args)) == {"city": "Paris", "unit": "c"}


@pytest.mark.parametrize("cut", range(1, 18))
def test_cut_at_every_token_boundary(token_pieces, cut):
    """The text up to token `cut` in one piece, the rest token by token."""
    pieces = ["".join(token_pieces[:cut]), *token_pieces[cut:]]
    assert joined(parse(pieces)) == EXPECTED


def test_cut_at_every_character():
    text = tiny_tool_model.ANSWER
    for i in range(len(text) + 1):
        assert joined(parse([text[:i], text[i:]])) == EXPECTED, i
    assert joined(parse(list(text))) == EXPECTED  # one character at a time


def test_text_that_only_looks_like_a_tag_is_content():
    assert joined(parse(["a <tool", "_cal", "!"])) == ("a <tool_cal!", [])
    assert joined(parse(["plain ", "text <", "b>"])) == ("plain text <b>", [])
    assert joined(parse(["ends on half a tag <tool_"])) == ("ends on half a tag <tool_", [])


def test_a_tag_that_holds_no_call_stays_text():
    text = "x <tool_call>not json</tool_call> y"
    assert joined(parse([text])) == (text, [])


def test_arguments_before_the_name_and_a_list_of_calls_are_read_whole():
    text = '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>'
    assert joined(parse(list(text))) == ("", [("f", '{"a": 1}')])
    markers = markers_for("... <|tool_call|>[{...}]<|/tool_call|> ...")
    assert markers == Markers("<|tool_call|>", "<|/tool_call|>")
    text = '<|tool_call|>[{"name": "f", "arguments": {}}, {"name": "g", "parameters": {"b": "é"}}]<|/tool_call|>'
    assert joined(parse(list(text), markers)) == ("", [("f", "{}"), ("g", '{"b": "é"}')])


def test_a_call_cut_off_by_the_token_limit_keeps_what_came():
    text = '<tool_call>{"name": "f", "arguments": {"a": [1, 2'
    assert joined(parse([text])) == ("", [("f", '{"a": [1, 2')])


def test_without_markers_in_the_template_hermes_is_assumed():
    assert markers_for(None) == markers_for("{{ messages }}") == HERMES


def test_a_stream_with_calls_finishes_with_tool_calls(token_pieces):
    async def source():
        for piece in token_pieces:
            yield Delta(content=piece)
        yield Delta(finish_reason="stop")

    out = asyncio.run(_join(with_tool_calls(source(), ToolCallParser())))
    assert out.finish_reason == "tool_calls"
    assert out.text == tiny_tool_model.CONTENT
    assert [(c.name, c.arguments) for c in out.tool_calls] == tiny_tool_model.CALLS
