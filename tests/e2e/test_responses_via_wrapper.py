"""The Responses API through the wrapper: the openai SDK at the wrapper's base URL, the wrapper routing
/v1/responses by `model` to a real EchoGen worker and a real HFChatGen worker (the tiny tool model), which
serve it by translation (tests/e2e/test_responses.py runs the same checks straight at a worker).

These need the wrapper to route /v1/responses (issue #11's routing part): until it does, they fail with 404."""
from __future__ import annotations

import json

import pytest

from tests.support import responses_checks as checks
from tests.support import tiny_tool_model
from tests.support.servers import sdk_client, start_model_worker, start_worker, unique_model

ECHO = unique_model("resp-wrapped-echo")
TOOLER = unique_model("resp-wrapped-tooler")


@pytest.fixture(scope="module")
def client(module_procs, consul, wrapper, tmp_path_factory):
    path = tiny_tool_model.build(tmp_path_factory.mktemp("tiny-tooler"))
    tooler = start_model_worker(module_procs, consul, "generators.hf_chat.HFChatGen", "--model-path", str(path),
                                "--models", TOOLER, wait=False)
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", ECHO)
    checks.wait_registered(consul, tooler)
    with sdk_client(wrapper, ECHO), sdk_client(wrapper, TOOLER) as c:
        yield c


def test_create_echoes_the_last_user_text(client, wrapper, schemas):
    checks.check_create_echoes_the_last_user_text(client, wrapper.base_url, ECHO, schemas)


def test_stream_sends_the_whole_event_sequence(client, wrapper, schemas):
    checks.check_stream_sends_the_whole_event_sequence(client, wrapper.base_url, ECHO, schemas)


def test_function_call_round_trip(client):
    checks.check_function_call_round_trip(client, ECHO)


def test_streamed_function_call(client, wrapper, schemas):
    checks.check_streamed_function_call(client, wrapper.base_url, ECHO, schemas)


@pytest.mark.parametrize("case", ["missing model", "missing input", "input of the wrong type", "previous_response_id"])
def test_bad_input_gets_an_openai_error(client, wrapper, case, schemas):
    checks.check_bad_input(wrapper.base_url, ECHO, case, schemas)


def test_hf_chat_answers_responses_whole_and_streamed_with_function_calls(client):
    tools = [{"type": "function", "name": name, "parameters": {"type": "object"}} for name, _ in tiny_tool_model.CALLS]
    whole = client.responses.create(model=TOOLER, input="weather in Paris?", tools=tools)
    assert whole.output_text == tiny_tool_model.CONTENT
    expected = [(name, json.loads(args)) for name, args in tiny_tool_model.CALLS]
    assert [(i.name, json.loads(i.arguments)) for i in whole.output if i.type == "function_call"] == expected
    with client.responses.stream(model=TOOLER, input="weather in Paris?", tools=tools) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == tiny_tool_model.CONTENT
    assert [(i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"] == expected
