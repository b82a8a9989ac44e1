"""The whole path with the real openai SDK: client -> wrapper -> Consul-routed EchoGen worker."""
from __future__ import annotations

import base64
import math
import struct

import httpx
import openai
import pytest

from tests.support.servers import sdk_client, start_worker, unique_model

MODEL = unique_model()


@pytest.fixture(scope="module")
def client(module_procs, consul, wrapper):
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", MODEL)
    with sdk_client(wrapper, MODEL) as c:
        yield c


def test_chat_json(client, schemas):
    resp = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello  there world"}])
    schemas.validate("CreateChatCompletionResponse", resp.http_response.json())
    chat = resp.parse()
    assert chat.choices[0].message.content == "hello  there world"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.model == MODEL
    assert chat.usage.completion_tokens == 3
    assert chat.usage.prompt_tokens == 2 + 3
    assert chat.usage.total_tokens == 8


def test_chat_stream_matches_json(client, schemas):
    text = "the quick  brown fox\njumps over"
    stream = client.chat.completions.create(model=MODEL, stream=True,
                                            messages=[{"role": "user", "content": text}])
    chunks = list(stream)
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    assert streamed == whole.choices[0].message.content == text
    assert len(chunks) == len(text.split()) + 1  # one chunk per word, then the finish chunk


def test_stream_wire_format(wrapper, client):
    """[DONE] is the last event, the content type is SSE, and every event is a JSON chunk before it."""
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", timeout=10,
                      json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c"}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1


def test_stream_usage_chunk(client, schemas):
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "one two"}]))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 2
    schemas.validate("CreateChatCompletionStreamResponse", chunks[-1].model_dump(exclude_unset=True))


def test_completions_json_and_stream(client, schemas):
    resp = client.completions.with_raw_response.create(model=MODEL, prompt="complete  me please")
    schemas.validate("CreateCompletionResponse", resp.http_response.json())
    whole = resp.parse()
    assert whole.choices[0].text == "complete  me please"
    chunks = list(client.completions.create(model=MODEL, prompt="complete  me please", stream=True))
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    # The spec reuses CreateCompletionResponse for stream events, whose finish_reason may not be null;
    # OpenAI itself sends null until the last chunk, and so do we. Everything else validates as is.
    for c in chunks:
        event = c.model_dump(exclude_unset=True)
        if event["choices"][0]["finish_reason"] is None:
            event["choices"][0]["finish_reason"] = "stop"
        schemas.validate("CreateCompletionResponse", event)


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_string_and_list(client, wrapper, schemas):
    one = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    batch = client.embeddings.create(model=MODEL, input=["hello", "goodbye"], encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1]
    assert batch.data[0].embedding == pytest.approx(one.data[0].embedding)
    assert batch.data[0].embedding != batch.data[1].embedding
    assert _norm(one.data[0].embedding) == pytest.approx(1.0)
    raw = httpx.post(wrapper.base_url + "/embeddings", json={"model": MODEL, "input": ["a", "b c"]}).json()
    schemas.validate("CreateEmbeddingResponse", raw)
    assert raw["usage"]["prompt_tokens"] == 3


def test_embeddings_base64_is_the_sdk_default(client, wrapper):
    floats = client.embeddings.create(model=MODEL, input="same text", encoding_format="float").data[0].embedding
    default = client.embeddings.create(model=MODEL, input="same text").data[0].embedding  # SDK asks for base64
    assert default == pytest.approx(floats, abs=1e-6)
    raw = httpx.post(wrapper.base_url + "/embeddings",
                     json={"model": MODEL, "input": "same text", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats, abs=1e-6)


def test_models_list_shape(client, schemas):
    page = client.models.with_raw_response.list()
    schemas.validate("ListModelsResponse", page.http_response.json())
    assert MODEL in {m.id for m in page.parse()}


def test_unknown_model_is_404(client, schemas):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    body = err.value.response.json()
    schemas.validate("ErrorResponse", body)
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"


def test_extra_fields_pass_through(client):
    """Fields the wrapper does not know reach the worker untouched (EchoGen ignores them)."""
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "ok"}], seed=0, temperature=0, n=2,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="none", user="u", extra_body={"future_field": {"x": 1}})
    assert [c.message.content for c in chat.choices] == ["ok", "ok"]
