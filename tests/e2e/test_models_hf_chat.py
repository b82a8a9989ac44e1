"""HFChatGen serving a tiny random-weight Llama (built here, in a temp folder) through a real worker and the
wrapper, driven with the openai SDK. The test process loads the same model to compute reference answers."""
from __future__ import annotations

import re

import openai
import pytest

from tests.support import tiny_chat_model
from tests.support.procs import wait_until
from tests.support.servers import leave_stream_after, sdk_client, start_model_worker, unique_model

MODEL = unique_model("tiny-llama")
MESSAGES = [{"role": "system", "content": "w001 w002"}, {"role": "user", "content": "w010 w011 w012"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_chat_model.build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def worker(module_procs, consul, model_dir):
    return start_model_worker(module_procs, consul, "generators.hf_chat.HFChatGen", "--model-path", str(model_dir),
                              "--models", MODEL)


@pytest.fixture(scope="module")
def client(worker, wrapper):
    with sdk_client(wrapper, MODEL) as c:
        yield c


class Reference:
    """The same model in this process: what greedy decoding must produce, and how many tokens things are."""

    def __init__(self, path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()

    def prompt_ids(self, messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def greedy(self, ids: list[int], max_new_tokens: int) -> tuple[str, int]:
        import torch

        with torch.inference_mode():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=False)
        generated = out[0, len(ids):]
        return self.tokenizer.decode(generated, skip_special_tokens=True), len(generated)


@pytest.fixture(scope="module")
def reference(model_dir) -> Reference:
    return Reference(model_dir)


def chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)


def stream_chat(client, **kwargs):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_stream_equals_json_equals_greedy_reference(client, reference):
    whole = chat(client, temperature=0, seed=3, max_tokens=16)
    chunks, streamed = stream_chat(client, temperature=0, seed=3, max_tokens=16)
    expected, _ = reference.greedy(reference.prompt_ids(MESSAGES), 16)
    assert streamed == whole.choices[0].message.content == expected
    assert len(expected.split()) == 16
    # streamed as produced: one chunk per generated token, then the finish chunk and the usage chunk
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 16


def test_max_tokens_is_respected(client, reference):
    for limit in ({"max_tokens": 7}, {"max_completion_tokens": 5}):
        answer = chat(client, temperature=0, **limit)
        n = next(iter(limit.values()))
        assert answer.usage.completion_tokens == n
        assert reference.count(answer.choices[0].message.content) == n
        assert answer.choices[0].finish_reason == "length"
    chunks, _ = stream_chat(client, temperature=0, max_tokens=4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_usage_matches_the_tokenizer(client, reference):
    whole = chat(client, temperature=0, max_tokens=9)
    prompt_tokens = len(reference.prompt_ids(MESSAGES))
    assert whole.usage.prompt_tokens == prompt_tokens
    assert whole.usage.completion_tokens == reference.count(whole.choices[0].message.content) == 9
    chunks, _ = stream_chat(client, temperature=0, max_tokens=9)
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.completion_tokens == 9


def test_seed_makes_sampling_repeatable(client):
    first = chat(client, temperature=1.0, seed=5, max_tokens=20).choices[0].message.content
    again = chat(client, temperature=1.0, seed=5, max_tokens=20).choices[0].message.content
    other = chat(client, temperature=1.0, seed=6, max_tokens=20).choices[0].message.content
    assert first == again
    assert first != other


def test_a_tiny_top_p_leaves_only_the_top_token(client, reference):
    sampled = chat(client, temperature=1.0, top_p=1e-9, seed=11, max_tokens=12).choices[0].message.content
    assert sampled == reference.greedy(reference.prompt_ids(MESSAGES), 12)[0]


def test_stop_sequence_ends_the_answer_before_it(client):
    full = chat(client, temperature=1.0, seed=5, max_tokens=20).choices[0].message.content
    words = full.split()
    k = next(i for i in range(2, len(words)) if words[i] not in words[:i])
    answer = chat(client, temperature=1.0, seed=5, max_tokens=20, stop=["never-there", words[k]])
    assert answer.choices[0].message.content == full[: full.index(words[k])]
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == k + 1  # generation stopped at the token completing the stop
    _, streamed = stream_chat(client, temperature=1.0, seed=5, max_tokens=20, stop=words[k])
    assert streamed == answer.choices[0].message.content


def test_completions_use_the_prompt_without_template(client, reference):
    prompt = "w020 w021 w022"
    answer = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6)
    ids = reference.tokenizer(prompt)["input_ids"]
    assert answer.choices[0].text == reference.greedy(ids, 6)[0]
    assert answer.usage.prompt_tokens == len(ids)
    streamed = "".join(c.choices[0].text for c in
                       client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stream=True))
    assert streamed == answer.choices[0].text


def test_a_token_prompt_is_the_models_own_tokens(client, reference):
    ids = reference.tokenizer("w020 w021 w022")["input_ids"]
    by_tokens = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=6)
    by_text = client.completions.create(model=MODEL, prompt="w020 w021 w022", temperature=0, max_tokens=6)
    assert by_tokens.choices[0].text == by_text.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=[10**6], max_tokens=1)
    assert err.value.response.json()["error"]["param"] == "prompt"


def test_max_tokens_zero_generates_nothing(client):
    answer = client.completions.create(model=MODEL, prompt="w001", max_tokens=0)
    choice = answer.choices[0]
    assert (choice.text, choice.finish_reason, answer.usage.completion_tokens) == ("", "length", 0)


def test_more_tokens_than_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, max_tokens=tiny_chat_model.CONTEXT)
    assert err.value.response.json()["error"]["code"] == "context_length_exceeded"


def test_generation_stops_when_the_client_goes_away(client, wrapper, worker):
    limit = 8000  # minutes of work for this model if nothing stopped it
    body = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": limit, "stream": True}
    leave_stream_after(wrapper.base_url + "/chat/completions", body)
    pattern = re.compile(r"the client went away after (\d+) of at most (\d+) tokens")
    wait_until(lambda: pattern.search(worker.proc.output()), 60,
               f"the worker to stop generating\n{worker.proc.output()[-3000:]}")
    generated, at_most = map(int, pattern.search(worker.proc.output()).groups())
    assert at_most == limit
    assert 3 <= generated < limit
    # the model is free again: the next request is answered
    assert chat(client, temperature=0, max_tokens=2).usage.completion_tokens == 2
