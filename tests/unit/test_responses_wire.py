"""The Responses API's translation into a chat request and its event framing (common/responses_wire.py)."""
from __future__ import annotations

import orjson
import pytest

from common import responses_wire as rw
from common.errors import InvalidRequest


def test_a_string_input_is_one_user_message_after_the_instructions():
    assert rw.chat_messages("hi", "be brief") == [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hi"}]


def test_parallel_function_calls_join_into_one_assistant_message():
    items = [{"role": "user", "content": "two cities"},
             {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{\"c\": 1}"},
             {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{\"c\": 2}"},
             {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_text", "text": "one"}]},
             {"type": "reasoning", "id": "rs_1", "summary": []}]
    messages = rw.chat_messages(items)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["a", "b"]
    assert messages[2] == {"role": "tool", "tool_call_id": "a", "content": "one"}


@pytest.mark.parametrize("body, param", [
    ({"input": None}, "input"),
    ({"input": "x", "instructions": 3}, "instructions"),
    ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"input": []}, "input"),
])
def test_what_cannot_be_served_is_a_400_naming_the_field(body, param):
    with pytest.raises(InvalidRequest) as refused:
        rw.check_request({"model": "m", **body})
        rw.chat_request({"model": "m", **body})
    assert refused.value.param == param


@pytest.mark.parametrize("field, value", [("previous_response_id", "resp_1"), ("conversation", "conv_1"),
                                          ("store", True), ("background", True)])
def test_a_stateful_feature_is_refused_by_name_before_routing(field, value):
    from common.wire import Capability, require_routing_fields

    with pytest.raises(InvalidRequest) as refused:
        require_routing_fields({"model": "m", "input": "x", field: value}, Capability.RESPONSES)
    assert (refused.value.param, refused.value.code) == (field, "unsupported_parameter")


def test_stateless_values_of_the_stateful_fields_are_served():
    from common.wire import Capability, require_routing_fields

    body = {"model": "m", "input": "x", "store": False, "background": False, "previous_response_id": None}
    assert require_routing_fields(body, Capability.RESPONSES) == "m"
    rw.check_request(body)
    assert rw.chat_request(body) == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_an_event_is_framed_with_its_name_and_number():
    frame = rw.sse_named_event("response.output_text.delta", {"delta": "hi"}, 7)
    name, data, *rest = frame.split(b"\n")
    assert name == b"event: response.output_text.delta" and rest == [b"", b""]
    assert orjson.loads(data.removeprefix(b"data: ")) == {"type": "response.output_text.delta",
                                                          "sequence_number": 7, "delta": "hi"}
