"""The Responses API (/v1/responses) served by real workers from chat Generators, by translation, called with
the openai SDK pointed straight at each worker (tests/e2e/test_responses_via_wrapper.py runs the same checks
through the wrapper). EchoGen answers with the last user text, word by word, and calls a function tool when
offered one; ChatRequestEchoGen shows the chat request a Responses request was translated into."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support import responses_checks as checks
from tests.support.servers import Server, start_worker, unique_model

ECHO = unique_model("resp-echo")
FAILING = unique_model("resp-failing")
CHAT_ECHO = unique_model("resp-chat-echo")


@pytest.fixture(scope="module")
def workers(module_procs, consul) -> dict[str, Server]:
    return {
        ECHO: start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", ECHO),
        FAILING: start_worker(module_procs, consul, "tests.support.fault_generators.FailingStreamGen",
                              "--models", FAILING),
        CHAT_ECHO: start_worker(module_procs, consul, "tests.support.responses_generators.ChatRequestEchoGen",
                                "--models", CHAT_ECHO),
    }


@pytest.fixture(scope="module")
def echo(workers) -> Server:
    return workers[ECHO]


@pytest.fixture(scope="module")
def client(echo):
    with checks.client_for(echo.base_url) as c:
        yield c


def test_create_echoes_the_last_user_text(client, echo, schemas):
    checks.check_create_echoes_the_last_user_text(client, echo.base_url, ECHO, schemas)


def test_stream_sends_the_whole_event_sequence(client, echo, schemas):
    checks.check_stream_sends_the_whole_event_sequence(client, echo.base_url, ECHO, schemas)


def test_function_call_round_trip(client):
    checks.check_function_call_round_trip(client, ECHO)


def test_streamed_function_call(client, echo, schemas):
    checks.check_streamed_function_call(client, echo.base_url, ECHO, schemas)


@pytest.mark.parametrize("case", checks.BAD_INPUT)
def test_bad_input_gets_an_openai_error(echo, case, schemas):
    checks.check_bad_input(echo.base_url, ECHO, case, schemas)


def test_stateful_features_are_refused_by_name_but_store_false_is_served(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=ECHO, input="hi", previous_response_id="resp_123")
    assert refused.value.status_code == 400 and "previous_response_id" in refused.value.message
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert refused.value.code == "unsupported_parameter"
    assert client.responses.create(model=ECHO, input="hi", store=False).output_text == "hi"


def test_input_items_and_settings_are_translated_into_a_chat_request(workers):
    """Items and instructions become messages, flat tools become chat tools, text.format a response_format,
    max_output_tokens max_tokens; a cut answer ("length") is an incomplete Response."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    with checks.client_for(workers[CHAT_ECHO].base_url) as client:
        response = client.responses.create(
            model=CHAT_ECHO, instructions="be brief", max_output_tokens=50, temperature=0.5, top_p=0.9,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                   {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                   {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
                   {"role": "user", "content": "thanks"}],
            tools=checks.TOOLS, tool_choice={"type": "function", "name": "get_weather"},
            text={"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}})
    assert json.loads(response.output_text) == {
        "model": CHAT_ECHO, "max_tokens": 50, "temperature": 0.5, "top_p": 0.9,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]},
            {"role": "user", "content": "thanks"}],
        "tools": [{"type": "function", "function": {k: v for k, v in checks.TOOLS[0].items() if k != "type"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "weather", "schema": schema, "strict": True}}}
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_input_tokens_are_counted_by_the_generator(client):
    counted = client.responses.input_tokens.count(model=ECHO, input="one two three", instructions="four five")
    assert counted.input_tokens == 5  # EchoGen counts words


def test_a_failure_mid_stream_ends_with_response_failed(workers, schemas):
    events = checks.raw_events(workers[FAILING].base_url, {"model": FAILING, "input": "hi"})
    assert [name for name, _ in events][-1] == "response.failed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for _, data in events:
        schemas.validate("ResponseStreamEvent", data)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "generator broke" not in json.dumps(failed)  # internals are not shown
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas == ["one ", "two "]


def test_a_worker_without_the_model_answers_404(echo):
    r = httpx.post(echo.base_url + "/responses", json={"model": "no-such-model", "input": "hi"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
