"""HFChatGen in a real worker, serving the tiny tool model (tests/support/tiny_tool_model.py: it always writes
some text and two <tool_call> tags): the Responses API, and the tool calls parsed out of the model's text, as
chat completions and as Responses. The openai SDK is pointed straight at the worker (the wrapper's routing of
/v1/responses is tests/e2e/test_responses_via_wrapper.py)."""
from __future__ import annotations

import json

import pytest

from tests.support import responses_checks as checks
from tests.support import tiny_tool_model
from tests.support.servers import Server, start_model_worker, unique_model

TOOLER = unique_model("tiny-tooler")
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "get_time")]
QUESTION = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def worker(module_procs, consul, tmp_path_factory) -> Server:
    path = tiny_tool_model.build(tmp_path_factory.mktemp("tiny-tooler"))
    return start_model_worker(module_procs, consul, "generators.hf_chat.HFChatGen", "--model-path", str(path),
                              "--models", TOOLER)


@pytest.fixture(scope="module")
def tooler(worker):
    with checks.client_for(worker.base_url) as c:
        yield c


def test_responses_give_the_chat_answer_whole_and_streamed(tooler, worker, schemas):
    """With no tools offered, the model's text is the Response's, whole and streamed; cut at
    max_output_tokens, the Response is incomplete."""
    whole = tooler.responses.create(model=TOOLER, input="weather?")
    assert whole.output_text == tiny_tool_model.ANSWER and whole.status == "completed"
    chat = tooler.chat.completions.create(model=TOOLER, messages=[{"role": "user", "content": "weather?"}])
    assert whole.usage.input_tokens == chat.usage.prompt_tokens
    assert whole.usage.output_tokens == chat.usage.completion_tokens > len(tiny_tool_model.PIECES)
    cut = "".join(tiny_tool_model.PIECES[:3])
    with tooler.responses.stream(model=TOOLER, input="weather?", max_output_tokens=3) as stream:
        events = list(stream)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == cut
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # a cut answer ends with response.incomplete, as OpenAI's does (the SDK's get_final_response() wants
    # response.completed, so the Response is read from the last event)
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == cut
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    for _, data in checks.raw_events(worker.base_url, {"model": TOOLER, "input": "weather?"}):
        schemas.validate("ResponseStreamEvent", data)


def expected_calls():
    return [(name, json.loads(args)) for name, args in tiny_tool_model.CALLS]


def test_tool_calls_in_a_whole_chat_completion(tooler, schemas):
    chat = tooler.chat.completions.create(model=TOOLER, messages=QUESTION, tools=TOOLS)
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == tiny_tool_model.CONTENT
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == expected_calls()
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls)
    schemas.validate("CreateChatCompletionResponse", chat.model_dump(exclude_unset=True))


def test_tool_calls_streamed_with_their_arguments_in_pieces(tooler, schemas):
    chunks = list(tooler.chat.completions.create(model=TOOLER, messages=QUESTION, tools=TOOLS, stream=True))
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    pieces = [t for c in chunks for t in c.choices[0].delta.tool_calls or ()]
    calls = {}
    for t in pieces:
        name, args = calls.get(t.index, (t.function.name, ""))
        calls[t.index] = (name, args + (t.function.arguments or ""))
    assert content == tiny_tool_model.CONTENT
    assert [(n, json.loads(a)) for n, a in (calls[i] for i in sorted(calls))] == expected_calls()
    assert len([t for t in pieces if t.index == 0 and t.function.arguments]) > 1  # streamed as they came
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_without_tools_offered_the_tags_are_text(tooler):
    chat = tooler.chat.completions.create(model=TOOLER, messages=QUESTION)
    assert chat.choices[0].message.content == tiny_tool_model.ANSWER
    assert chat.choices[0].message.tool_calls is None and chat.choices[0].finish_reason == "stop"


def test_tool_calls_as_responses_function_calls(tooler):
    tools = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
             for t in TOOLS]
    whole = tooler.responses.create(model=TOOLER, input="weather in Paris?", tools=tools)
    assert [item.type for item in whole.output] == ["message", "function_call", "function_call"]
    assert whole.output_text == tiny_tool_model.CONTENT
    assert [(i.name, json.loads(i.arguments)) for i in whole.output[1:]] == expected_calls()
    with tooler.responses.stream(model=TOOLER, input="weather in Paris?", tools=tools) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = [(e.name, json.loads(e.arguments)) for e in events if e.type == "response.function_call_arguments.done"]
    assert done == expected_calls()
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert events[-1].type == "response.completed"
