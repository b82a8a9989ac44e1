"""EchoGen's tool use (the function-call round trip the Responses tests drive), in process: it calls a
well-formed function tool, answers with a tool's result, and never fails on odd `tools` / `tool_choice`."""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from common.settings import Settings
from generators.echo import EchoGen
from worker.app import Worker

TOOLS = [{"type": "function", "function": {"name": "first"}}, {"type": "function", "function": {"name": "second"}}]
USER = [{"role": "user", "content": "look it up"}]


@pytest.fixture(scope="module")
def worker():
    with TestClient(Worker(EchoGen(models=["m"]), Settings()).app(), raise_server_exceptions=False) as client:
        yield client


def chat(worker, **body):
    r = worker.post("/v1/chat/completions", json={"model": "m", **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


@pytest.mark.parametrize("tool_choice, name", [(None, "first"), ("auto", "first"), ("required", "first"),
                                               ({"type": "function", "function": {"name": "second"}}, "second")])
def test_the_chosen_tool_is_called_with_the_user_text(worker, tool_choice, name):
    choice = chat(worker, messages=USER, tools=TOOLS, **({"tool_choice": tool_choice} if tool_choice else {}))
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == name and json.loads(call["function"]["arguments"]) == {"text": "look it up"}


def test_a_tool_result_is_the_answer(worker):
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"}]
    assert chat(worker, messages=messages, tools=TOOLS)["message"]["content"] == "found it"


@pytest.mark.parametrize("extra", [{"tools": TOOLS, "tool_choice": "none"}, {"tools": []},
                                   {"tools": [{"type": "function"}, 3, {"function": "x"}]}])
def test_without_a_usable_tool_it_echoes(worker, extra):
    assert chat(worker, messages=USER, **extra)["message"]["content"] == "look it up"


def test_a_tool_choice_naming_no_tool_falls_back_to_the_first(worker):
    choice = chat(worker, messages=USER, tools=TOOLS, tool_choice={"type": "function", "function": "second"})
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "first"
