"""openai_worker.py against an upstream that misbehaves (tests/support/fake_upstream.py, a real HTTP server on
loopback): compressed answers, a client hanging up on a slow upstream, a body cut in the middle, an error
that leaks the key. SDK -> wrapper -> openai_worker.py -> the fake upstream, all real processes."""
from __future__ import annotations

import json

import openai
import pytest

from tests.support.fake_upstream import GZIP_ANSWER, STREAM_WORDS
from tests.support.procs import post, wait_until
from tests.support.servers import routable, start_worker, unique_model

GZIP, SLOW, HALF, LEAKY, FAST = (unique_model(name) for name in ("gzip", "slow", "half", "leaky", "fast"))
KEY = "sk-hardening-secret-5551234"


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def relay_worker(module_procs, consul, upstream):
    # one request at a time, so a slot that is not given back blocks the next request
    return start_worker(module_procs, consul, "(openai_worker.py takes no generator)",
                        "--models", f"{GZIP}=gzip,{SLOW}=slow,{HALF}=half,{LEAKY}=leaky,{FAST}=fast",
                        "--max-concurrency", "1", "--svc-name", unique_model("hardening-svc"),
                        script="openai_worker.py", env={"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": KEY})


@pytest.fixture(scope="module")
def client(relay_worker, wrapper):
    wait_until(lambda: routable(wrapper, FAST), 10, f"{FAST} to be routable")
    with openai.OpenAI(base_url=wrapper.base_url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_a_gzipped_json_answer_is_relayed_decoded(client, relay_worker, upstream):
    raw = client.chat.completions.with_raw_response.create(**chat(GZIP))
    assert upstream.gzipped  # the upstream really compressed (the worker asked for gzip)
    assert raw.http_response.content == GZIP_ANSWER  # the upstream's JSON, byte for byte
    assert raw.parse().choices[0].message.content == json.loads(GZIP_ANSWER)["choices"][0]["message"]["content"]
    # straight from the worker: the decoded body, with no stale Content-Encoding and its own length
    status, headers, body = post(relay_worker.base_url + "/chat/completions", chat(GZIP))
    headers = {k.lower(): v for k, v in headers.items()}
    assert (status, body) == (200, GZIP_ANSWER)
    assert "content-encoding" not in headers
    assert headers["content-length"] == str(len(GZIP_ANSWER))


def test_a_gzipped_stream_is_relayed_decoded_event_by_event(client, upstream):
    stream = client.chat.completions.create(**chat(GZIP), stream=True)
    chunks = iter(stream)
    first = next(chunks)  # arrives while the upstream still holds the rest back
    upstream.release_stream()
    rest = list(chunks)
    assert upstream.stream_held_until_released is True  # the first event was not buffered behind the rest
    assert first.choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in rest) == "".join(STREAM_WORDS)
    assert rest[-1].choices[0].finish_reason == "stop"


def test_a_client_hanging_up_cancels_the_upstream_call_and_frees_the_slot(client, upstream):
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(**chat(SLOW))
    # the upstream would answer only after 30 s: its call must be cancelled instead
    wait_until(upstream.disconnected.is_set, 5, "the upstream to see its caller hang up")
    assert upstream.slow_calls == 1  # the wrapper did not send the abandoned prompt again
    # --max-concurrency 1: this is served only if the abandoned call gave its slot back
    answer = client.with_options(timeout=10).chat.completions.create(**chat(FAST))
    assert answer.choices[0].message.content == "fast answer"


def test_a_json_body_cut_in_the_middle_is_a_clean_502(client, relay_worker, schemas):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**chat(HALF))
    assert err.value.status_code == 502
    assert err.value.response.json()["error"]["code"] == "upstream_failed"
    # straight from the worker: one JSON error object, no half answer nor SSE event around it
    status, headers, body = post(relay_worker.base_url + "/chat/completions", chat(HALF))
    assert (status, {k.lower(): v for k, v in headers.items()}["content-type"]) == (502, "application/json")
    schemas.validate("ErrorResponse", json.loads(body))
    assert json.loads(body)["error"]["code"] == "upstream_failed"


def test_the_key_is_cut_out_of_every_field_of_an_upstream_error(client, relay_worker, schemas):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**chat(LEAKY))
    response = err.value.response
    assert KEY not in response.text
    error = response.json()["error"]
    schemas.validate("ErrorResponse", response.json())
    assert error["message"] == "Invalid request made with key [OPENAI_API_KEY]."
    assert error["type"] == "invalid_request_error ([OPENAI_API_KEY])"
    assert error["param"] == "messages[[OPENAI_API_KEY]]"
    assert "[OPENAI_API_KEY]" in error["code"]
    assert KEY not in relay_worker.proc.output()
