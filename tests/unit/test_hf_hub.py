"""HfHubGen against a mocked Hugging Face Inference API (respx): the calls it makes, the vectors it returns,
and each API failure as the OpenAI-shaped error a client sees from the worker."""
from __future__ import annotations

import asyncio
import base64
import json
import math
import struct

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from common.errors import OpenAIError
from common.settings import Settings
from generators.huggingface_hub import DEFAULT_API_BASE, HfHubGen
from worker.app import Worker

TOKEN = "hf_secret_token_123"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
URL = f"{DEFAULT_API_BASE}/models/{MINILM}/pipeline/feature-extraction"


@pytest.fixture(autouse=True)
def hf_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def run(gen: HfHubGen, request: dict):
    async def go():
        await gen.startup()
        try:
            return await gen.embed(request)
        finally:
            await gen.shutdown()
    return asyncio.run(go())


def failure(gen: HfHubGen, request: dict) -> OpenAIError:
    with pytest.raises(OpenAIError) as err:
        run(gen, request)
    assert TOKEN not in str(err.value.message)
    return err.value


@respx.mock
def test_calls_the_api_with_the_token_and_returns_unit_vectors():
    route = respx.post(URL).respond(json=[[3.0, 4.0], [0.0, 2.0]])
    vectors = run(HfHubGen(), {"model": MINILM, "input": ["first", "second"]})
    assert vectors == [pytest.approx([0.6, 0.8]), pytest.approx([0.0, 1.0])]
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent.content) == {"inputs": ["first", "second"]}


@respx.mock
def test_a_public_name_maps_to_the_model_id_and_inputs_go_in_batches():
    route = respx.post(f"{DEFAULT_API_BASE}/models/org/model/pipeline/feature-extraction").mock(
        side_effect=lambda request: httpx.Response(200, json=[[1.0, float(len(t))]
                                                              for t in json.loads(request.content)["inputs"]]))
    gen = HfHubGen(models=["mini=org/model"], batch_size=2, normalize=False)
    assert gen.models == ("mini",)
    vectors = run(gen, {"model": "mini", "input": ["a", "bb", "ccc"]})
    assert vectors == [[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]
    assert [json.loads(c.request.content)["inputs"] for c in route.calls] == [["a", "bb"], ["ccc"]]


@respx.mock
def test_per_token_vectors_are_mean_pooled():
    respx.post(URL).respond(json=[[[[1.0, 0.0], [3.0, 0.0]]]])  # one input, shaped [1][tokens][dim]
    assert run(HfHubGen(normalize=False), {"model": MINILM, "input": ["x"]}) == [[2.0, 0.0]]


@respx.mock
def test_without_hf_token_no_authorization_is_sent(monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    route = respx.post(URL).respond(json=[[1.0]])
    run(HfHubGen(), {"model": MINILM, "input": ["x"]})
    assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize("response, status, code", [
    (httpx.Response(400, json={"error": "Input is too long"}), 400, "invalid_input"),
    (httpx.Response(422, json={"error": ["inputs: field required"]}), 400, "invalid_input"),
    (httpx.Response(401, json={"error": f"Invalid credentials in Authorization header: {TOKEN}"}), 502,
     "upstream_auth_failed"),
    (httpx.Response(403, json={"error": "forbidden"}), 502, "upstream_auth_failed"),
    (httpx.Response(404, json={"error": "Model not found"}), 502, "upstream_model_not_found"),
    (httpx.Response(500, text="<html>oops</html>"), 502, "upstream_error"),
    (httpx.Response(504, json={"error": "timeout"}), 504, "upstream_timeout"),
    (httpx.Response(200, json={"unexpected": True}), 502, "upstream_bad_answer"),
    (httpx.Response(200, json=[["not", "numbers"]]), 502, "upstream_bad_answer"),
])
@respx.mock
def test_api_failures_map_to_openai_errors(response, status, code):
    respx.post(URL).mock(return_value=response)
    err = failure(HfHubGen(), {"model": MINILM, "input": ["x"]})
    assert (err.status, err.code) == (status, code)


@respx.mock
def test_the_bad_input_message_is_passed_on():
    respx.post(URL).respond(400, json={"error": f"Input is too long (token {TOKEN})"})
    message = failure(HfHubGen(), {"model": MINILM, "input": ["x"]}).message
    assert "Input is too long (token [HF_TOKEN])" in message


def test_token_arrays_are_refused_before_any_call():
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(URL).respond(json=[[1.0]])
        err = failure(HfHubGen(), {"model": MINILM, "input": [[1, 2, 3]]})
    assert (err.status, err.param, route.called) == (400, "input", False)


@respx.mock
def test_rate_limit_keeps_retry_after():
    respx.post(URL).respond(429, headers={"Retry-After": "7"}, json={"error": "Rate limit reached"})
    err = failure(HfHubGen(), {"model": MINILM, "input": ["x"]})
    assert (err.status, err.type, err.headers) == (429, "rate_limit_error", {"Retry-After": "7"})


@respx.mock
def test_a_loading_model_is_503_with_its_estimated_time():
    respx.post(URL).respond(503, json={"error": "Model is currently loading", "estimated_time": 20.5})
    err = failure(HfHubGen(), {"model": MINILM, "input": ["x"]})
    assert (err.status, err.headers) == (503, {"Retry-After": "21"})


@pytest.mark.parametrize("exc, status, code", [
    (httpx.ConnectError("refused"), 502, "upstream_unreachable"),
    (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
])
@respx.mock
def test_network_failures(exc, status, code):
    respx.post(URL).mock(side_effect=exc)
    err = failure(HfHubGen(), {"model": MINILM, "input": ["x"]})
    assert (err.status, err.code) == (status, code)


@respx.mock
def test_through_the_worker_app_float_base64_and_errors(schemas):
    respx.post(URL).mock(side_effect=[httpx.Response(200, json=[[1.0, 0.0]]), httpx.Response(200, json=[[0.0, 1.0]]),
                                      httpx.Response(401, json={"error": "bad token"})])
    with TestClient(Worker(HfHubGen(), Settings()).app()) as worker:
        floats = worker.post("/v1/embeddings", json={"model": MINILM, "input": "hello world"}).json()
        schemas.validate("CreateEmbeddingResponse", floats)
        assert floats["data"][0]["embedding"] == [1.0, 0.0]
        assert floats["usage"]["prompt_tokens"] == 2  # the API reports no tokens: words are counted
        packed = worker.post("/v1/embeddings", json={"model": MINILM, "input": ["x"], "encoding_format": "base64"})
        assert struct.unpack("<2f", base64.b64decode(packed.json()["data"][0]["embedding"])) == (0.0, 1.0)
        refused = worker.post("/v1/embeddings", json={"model": MINILM, "input": "x"})
    assert refused.status_code == 502
    schemas.validate("ErrorResponse", refused.json())
    assert refused.json()["error"]["code"] == "upstream_auth_failed"
    assert TOKEN not in refused.text
    assert math.isclose(sum(x * x for x in floats["data"][0]["embedding"]), 1.0)
