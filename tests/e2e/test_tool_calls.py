"""Tool calls through the whole path: a Generator streams tool-call deltas (index, id, name, argument
fragments), the worker emits them as OpenAI chunks with finish_reason "tool_calls", the wrapper relays
them, and the openai SDK assembles the calls. ToolCallerGen echoes `tools` and `tool_choice` in its first
call's arguments, which shows they reach the Generator exactly as the client sent them."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.support.servers import sdk_client, start_worker, unique_model

MODEL = unique_model("tools")
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city, in °C — unicode survives too",
        "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                       "properties": {"city": {"type": "string"},
                                      "unit": {"type": "string", "enum": ["c", "f"]}}}}},
    {"type": "function", "function": {
        "name": "get_time", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": [], "properties": {}}}},
]
TOOL_CHOICE = {"type": "function", "function": {"name": "get_weather"}}
MESSAGES = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def client(module_procs, consul, wrapper):
    start_worker(module_procs, consul, "tests.support.generators_for_tests.ToolCallerGen", "--models", MODEL)
    with sdk_client(wrapper, MODEL) as c:
        yield c


def test_sdk_assembles_streamed_tool_calls(client):
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=TOOL_CHOICE) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.id, c.type, c.function.name) for c in calls] == [
        ("call_echo", "function", "get_weather"), ("call_second", "function", "get_time")]
    assert json.loads(calls[0].function.arguments) == {"tools": TOOLS, "tool_choice": TOOL_CHOICE}
    assert calls[0].function.parsed_arguments == {"tools": TOOLS, "tool_choice": TOOL_CHOICE}  # the SDK parsed it
    assert json.loads(calls[1].function.arguments) == {"call": 2}
    # the arguments really arrived in pieces, and the SDK reported each call once complete
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len({e.index for e in deltas}) == 2 and len(deltas) > 4
    assert sorted(e.index for e in events if e.type == "tool_calls.function.arguments.done") == [0, 1]


def test_stream_chunks_carry_index_and_id_like_openai(client, schemas):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                                 tool_choice="required", stream=True))
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
    pieces = [t for c in chunks if c.choices and c.choices[0].delta.tool_calls for t in c.choices[0].delta.tool_calls]
    firsts = [t for t in pieces if t.id]
    assert [(t.index, t.id, t.type, t.function.name) for t in firsts] == [
        (0, "call_echo", "function", "get_weather"), (1, "call_second", "function", "get_time")]
    assert all(t.id is None and t.function.name is None for t in pieces if t not in firsts)
    assert [c.choices[0].finish_reason for c in chunks if c.choices].count("tool_calls") == 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    args = "".join(t.function.arguments or "" for t in pieces if t.index == 0)
    assert json.loads(args) == {"tools": TOOLS, "tool_choice": "required"}


def test_whole_answer_has_the_joined_calls(client, wrapper, schemas):
    raw = httpx.post(wrapper.base_url + "/chat/completions", timeout=10,
                     json={"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "auto"}).json()
    schemas.validate("CreateChatCompletionResponse", raw)
    choice = raw["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [("call_echo", "get_weather"),
                                                                ("call_second", "get_time")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"tools": TOOLS, "tool_choice": "auto"}
