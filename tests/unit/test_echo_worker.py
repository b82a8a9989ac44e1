"""EchoGen behind the worker app, in process (Starlette TestClient): bodies that pass the worker's checks
reach the generator and must never crash it (the last two are bugs tests/e2e/test_fuzz.py found)."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from common.settings import Settings
from generators.echo import EchoGen
from worker.app import Worker


@pytest.fixture(scope="module")
def worker():
    with TestClient(Worker(EchoGen(models=["m"]), Settings()).app(), raise_server_exceptions=False) as client:
        yield client


def complete(worker, prompt):
    return worker.post("/v1/completions", json={"model": "m", "prompt": prompt})


@pytest.mark.parametrize("prompt, text", [("say this", "say this"), ([1404, 318], "1404 318"),
                                          (["a ", "b"], "a b")])
def test_prompts_are_echoed(worker, prompt, text):
    r = complete(worker, prompt)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == text


def test_a_multi_part_message_is_echoed(worker):
    content = [{"type": "text", "text": "multi "}, {"type": "image_url", "image_url": {"url": "x"}},
               {"type": "text", "text": "part"}]
    r = worker.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "multi part"


@pytest.mark.parametrize("prompt", [[1404, 2.0], [1404, 2**70]])
def test_a_token_prompt_with_an_integral_float_is_answered(worker, prompt):
    r = complete(worker, prompt)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("text", [{}, [None, None], 7])
def test_a_text_part_that_is_not_a_string_is_not_a_server_error(worker, text):
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    r = worker.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert r.status_code < 500, r.text
