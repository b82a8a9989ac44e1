"""What the Responses API must do, checked with the openai SDK against any base URL: a worker's own (until
the wrapper routes /v1/responses) or the wrapper's. Shared by tests/e2e/test_responses.py and
tests/e2e/test_responses_via_wrapper.py."""
from __future__ import annotations

import json

import httpx
import openai

from tests.support.procs import wait_until
from tests.support.schemas import Schemas

TEXT = "the quick brown fox"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
          "strict": True}]
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", *["response.output_text.delta"] * len(TEXT.split()),
               "response.output_text.done", "response.content_part.done", "response.output_item.done",
               "response.completed"]


def client_for(base_url: str, headers: dict[str, str] | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60, default_headers=headers)


def raw_events(base_url: str, body: dict, headers: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """A streamed Response's events as sent: (the `event:` line's name, the data)."""
    with httpx.stream("POST", base_url + "/responses", json={**body, "stream": True}, headers=headers,
                      timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def check_create_echoes_the_last_user_text(client: openai.OpenAI, base_url: str, model: str, schemas: Schemas,
                                           headers: dict[str, str] | None = None) -> None:
    response = client.responses.create(model=model, input=TEXT, instructions="answer briefly")
    assert response.status == "completed"
    assert response.output_text == TEXT
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.instructions == "answer briefly"
    assert response.usage.output_tokens == len(TEXT.split())
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    raw = httpx.post(base_url + "/responses", json={"model": model, "input": TEXT}, headers=headers, timeout=60)
    assert raw.status_code == 200, raw.text
    schemas.validate("Response", raw.json())


def check_stream_sends_the_whole_event_sequence(client: openai.OpenAI, base_url: str, model: str,
                                                schemas: Schemas, headers: dict[str, str] | None = None) -> None:
    with client.responses.stream(model=model, input=TEXT) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["the ", "quick ", "brown ", "fox"]
    assert final.output_text == TEXT and final.status == "completed"
    sent = raw_events(base_url, {"model": model, "input": TEXT}, headers)
    for name, data in sent:
        assert name == data["type"]  # the `event:` line names the event, as OpenAI sends it
        schemas.validate("ResponseStreamEvent", data)
    assert [name for name, _ in sent] == TEXT_EVENTS


def check_function_call_round_trip(client: openai.OpenAI, model: str) -> None:
    """Call → the caller runs the function → function_call_output → the final text (EchoGen answers with the
    function's output)."""
    question = [{"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]}]
    first = client.responses.create(model=model, input=question, tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"text": "weather in Paris?"})]
    assert calls[0].call_id and first.status == "completed"
    follow_up = [*question, *[item.model_dump(exclude_none=True) for item in first.output],
                 {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 °C"}]
    second = client.responses.create(model=model, input=follow_up, tools=TOOLS)
    assert second.output_text == "sunny, 21 °C"
    assert [item.type for item in second.output] == ["message"]


def check_streamed_function_call(client: openai.OpenAI, base_url: str, model: str, schemas: Schemas,
                                 headers: dict[str, str] | None = None) -> None:
    with client.responses.stream(model=model, input="weather in Paris?", tools=TOOLS,
                                 tool_choice={"type": "function", "name": "get_weather"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-4:] == ["response.function_call_arguments.delta", "response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"text": "weather in Paris?"}
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.name == "get_weather" and done.arguments == "".join(deltas)
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == done.arguments
    for _, data in raw_events(base_url, {"model": model, "input": "weather in Paris?", "tools": TOOLS}, headers):
        schemas.validate("ResponseStreamEvent", data)


BAD_INPUT = {
    "missing model": ({"input": "hi"}, 400, "model"),
    "missing input": ({"model": "MODEL"}, 400, "input"),
    "input of the wrong type": ({"model": "MODEL", "input": 7}, 400, "input"),
    "an unknown item": ({"model": "MODEL", "input": [{"type": "web_search_call", "id": "x"}]}, 400, "input[0].type"),
    "a message without a role": ({"model": "MODEL", "input": [{"type": "message", "content": "hi"}]}, 400,
                                 "input[0].role"),
    "tools not an array": ({"model": "MODEL", "input": "hi", "tools": {"type": "function"}}, 400, "tools"),
    "a built-in tool": ({"model": "MODEL", "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    "max_output_tokens a string": ({"model": "MODEL", "input": "hi", "max_output_tokens": "9"}, 400,
                                   "max_output_tokens"),
    "temperature out of range": ({"model": "MODEL", "input": "hi", "temperature": 7}, 400, "temperature"),
    "previous_response_id": ({"model": "MODEL", "input": "hi", "previous_response_id": "resp_1"}, 400,
                             "previous_response_id"),
    "store": ({"model": "MODEL", "input": "hi", "store": True}, 400, "store"),
    "background": ({"model": "MODEL", "input": "hi", "background": True}, 400, "background"),
}


def check_bad_input(base_url: str, model: str, case: str, schemas: Schemas,
                    headers: dict[str, str] | None = None) -> None:
    body, status, param = BAD_INPUT[case]
    body = {k: (model if v == "MODEL" else v) for k, v in body.items()}
    r = httpx.post(base_url + "/responses", json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    schemas.validate("ErrorResponse", r.json())
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def wait_registered(consul, server, timeout: float = 180) -> None:
    """A worker started with wait=False (a model loading meanwhile) has registered."""
    wait_until(lambda: f"-127.0.0.1-{server.port}" in " ".join(consul.services()), timeout,
               f"worker on {server.port} to register\n{server.proc.output()}")
