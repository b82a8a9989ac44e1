"""The wrapper's hop under misbehaving workers: keep-alive pings, huge answers, stale registrations, resets,
a failing fleet, and request bodies built to swell once parsed. Real Consul, real wrapper; the misbehaving
workers are tests/support/fake_worker.py processes registered by hand, the others real workers."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from tests.support.procs import get_json, wait_until
from tests.support.servers import (
    hits,
    registered,
    routable,
    start_fake_worker,
    start_worker,
    start_wrapper,
    unique_model,
)

MIB = 1024  # KiB


def chat_body(model: str, stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}


def sse_lines(r: httpx.Response) -> list[str]:
    return [line for line in r.iter_lines() if line]


def data_events(lines: list[str]) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def config(tmp_path, text: str) -> str:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return str(path)


def wait_idle(wrapper) -> None:
    wait_until(lambda: get_json(wrapper.url + "/health")[1]["in_flight"] == 0, 10, "the wrapper to free every slot")


def wait_in_table(consul, wrapper, model: str, service_id: str) -> None:
    """Until the hand-made registration is in Consul and the wrapper's blocking query had time to bring it."""
    wait_until(lambda: routable(wrapper, model), 10, f"{model} to be routable")
    wait_until(lambda: service_id in consul.services(), 10, f"{service_id} in Consul")
    time.sleep(1.0)


# ---- 1. keep-alive comments are not progress ----------------------------------------------------

def test_keepalive_pings_do_not_hold_off_the_idle_timeout(procs, consul, tmp_path):
    """A worker that sends one chunk, then only `: ping` comments every 0.5 s: with `timeouts.idle: 2`
    the stream ends with `idle_timeout` after ~2 s, not with `total_timeout` at the 20 s deadline."""
    wrapper = start_wrapper(procs, consul, "--config", config(
        tmp_path, "wrapper:\n  max_attempts: 1\n  timeouts:\n    idle: 2\n    total: 20\n"))
    pinger = start_fake_worker(procs, "pings")
    model = unique_model("pings")
    with registered(consul, "fake-pings", pinger.port, model) as service_id:
        wait_in_table(consul, wrapper, model, service_id)
        with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                          timeout=30) as r:
            assert r.status_code == 200
            lines = sse_lines(r)
        events = data_events(lines)
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "w0 "
        assert ": ping" in lines  # the pings reached the client: they were relayed, just not taken as progress
        assert json.loads(events[-1])["error"]["code"] == "idle_timeout"
        assert "[DONE]" not in events
        wait_idle(wrapper)


# ---- 2. answers are read within max_answer_bytes ------------------------------------------------

@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_a_huge_answer_is_a_502_and_never_held(procs, consul, tmp_path, declared):
    """A worker answering 200 MB of JSON: the wrapper (max_answer_bytes: 1 MiB) answers 502
    `answer_too_large` and its peak memory (VmHWM) grows by far less than that."""
    wrapper = start_wrapper(procs, consul, "--config", config(tmp_path, "wrapper:\n  max_answer_bytes: 1048576\n"))
    huge = start_fake_worker(procs, "huge", "--size", str(200 * 1024 * 1024), *(["--content-length"] if declared else []))
    model = unique_model("huge")
    with registered(consul, "fake-huge", huge.port, model) as service_id:
        wait_in_table(consul, wrapper, model, service_id)
        peak_before = wrapper.proc.memory_kib("VmHWM")
        for stream in (False, True):  # a stream request answered with JSON is read the same way
            r = httpx.post(wrapper.base_url + "/chat/completions", json=chat_body(model, stream), timeout=60)
            assert r.status_code == 502, r.text[:200]
            assert r.json()["error"]["code"] == "answer_too_large"
        assert hits(huge) >= 2
        assert wrapper.proc.memory_kib("VmHWM") - peak_before < 50 * MIB
        wait_idle(wrapper)


# ---- 3. a stale registration's 404 model_not_found is failed over -------------------------------

def test_a_stale_registration_is_failed_over(procs, consul, wrapper):
    """Model M has a real worker, and a registration pointing at a real worker that serves only N (as
    when a port was reused): every request for M still succeeds, and the stale instance was tried."""
    model, other = unique_model(), unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    elsewhere = start_worker(procs, consul, "generators.echo.EchoGen", "--models", other)
    with registered(consul, "stale", elsewhere.port, model) as service_id:
        wait_in_table(consul, wrapper, model, service_id)
        for i in range(25):
            stream = i % 5 == 4
            r = httpx.post(wrapper.base_url + "/chat/completions", json=chat_body(model, stream), timeout=30)
            assert r.status_code == 200, r.text
            if stream:
                assert r.text.rstrip().endswith("data: [DONE]")
        assert service_id in wrapper.proc.output()  # logged as not serving the model: it was tried
        wait_idle(wrapper)


# ---- 4. retries: within a budget; after the body was sent only if allowed -----------------------

def test_retries_stay_within_the_budget(procs, consul, tmp_path):
    """An always-503 worker, 50 requests, 3 attempts each: without a budget 150 hits; with 20% of the
    requests plus 0.5/s over the 10 s window, at most 50 + 10 + 5."""
    wrapper = start_wrapper(procs, consul, "--config", config(
        tmp_path, "wrapper:\n  retries:\n    budget: 0.2\n    min_per_second: 0.5\n"))
    sick = start_fake_worker(procs, "status", "--status", "503")
    model = unique_model("sick")
    with registered(consul, "fake-sick", sick.port, model) as service_id:
        wait_in_table(consul, wrapper, model, service_id)
        with httpx.Client(timeout=30) as client:
            statuses = [client.post(wrapper.base_url + "/chat/completions", json=chat_body(model)).status_code
                        for _ in range(50)]
        assert set(statuses) == {503}  # the worker's own answer, passed on
        assert 50 < hits(sick) <= 50 + 10 + 5
        wait_idle(wrapper)


@pytest.mark.parametrize("after_send", [True, False])
def test_a_reset_after_the_body_was_sent_is_retried_only_with_after_send(procs, consul, tmp_path, after_send):
    """A worker that reads the request and closes the connection, beside a healthy one (cooldown 0, so
    each request picks afresh): with `after_send: true` every request succeeds elsewhere; with false the
    request it got is answered 502 and sent nowhere else (the prompt is not run twice)."""
    wrapper = start_wrapper(procs, consul, "--config", config(
        tmp_path, f"wrapper:\n  cooldown: 0\n  retries:\n    after_send: {str(after_send).lower()}\n"))
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    resetting = start_fake_worker(procs, "reset")
    with registered(consul, "fake-reset", resetting.port, model) as service_id:
        wait_in_table(consul, wrapper, model, service_id)
        with httpx.Client(timeout=30) as client:
            answers = [client.post(wrapper.base_url + "/chat/completions", json=chat_body(model)) for _ in range(20)]
        failed = [r for r in answers if r.status_code != 200]
        assert hits(resetting) > 0
        if after_send:
            assert failed == []
        else:
            assert len(failed) == hits(resetting)
            assert {(r.status_code, r.json()["error"]["code"]) for r in failed} == {(502, "worker_failed")}
        wait_idle(wrapper)


# ---- 5. request bodies that swell once parsed ---------------------------------------------------

def empty_arrays_body(model: str, limit: int = 4 * 1024 * 1024) -> bytes:
    """A chat request padded to just under `limit` bytes with an unknown field of [[],[]] pairs: ~1.8
    million lists, ~130 MiB once parsed."""
    head = json.dumps(chat_body(model))[:-1].encode() + b', "x": ['
    pair = b"[[],[]],"
    count = (limit - len(head) - 2) // len(pair)
    return head + (pair * count)[:-1] + b"]}"


def test_a_body_of_millions_of_empty_arrays_is_refused_before_parsing(procs, consul, tmp_path):
    wrapper = start_wrapper(procs, consul)
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 10, "routable")
    body = empty_arrays_body(model)
    peak_before = wrapper.proc.memory_kib("VmHWM")
    for _ in range(3):
        r = httpx.post(wrapper.base_url + "/chat/completions", content=body,
                       headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400, r.text[:200]
        assert r.json()["error"]["code"] == "too_many_elements"
    assert wrapper.proc.memory_kib("VmHWM") - peak_before < 40 * MIB


def test_the_parsed_body_is_not_held_while_the_worker_works(procs, consul, tmp_path):
    """With the container cap lifted, such bodies are parsed (once each); while two of them wait on a
    slow worker, the wrapper holds their raw bytes, not the ~130 MiB each parses into."""
    lifted = config(tmp_path, "limits:\n  max_json_containers: 10000000\n")
    wrapper = start_wrapper(procs, consul, "--config", lifted)
    model = unique_model("slow")
    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model,
                 "--first-delay", "3", "--words", "1", "--config", lifted)
    wait_until(lambda: routable(wrapper, model), 10, "routable")
    body = empty_arrays_body(model)
    resident_before = wrapper.proc.memory_kib("VmRSS")
    statuses: list[int] = []

    async def send_two() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(*(client.post(wrapper.base_url + "/chat/completions", content=body,
                                                    headers={"Content-Type": "application/json"}) for _ in range(2)))
            statuses.extend(r.status_code for r in rs)

    sender = threading.Thread(target=asyncio.run, args=(send_two(),))
    sender.start()
    try:
        wait_until(lambda: get_json(wrapper.url + "/health")[1]["in_flight"] == 2, 15, "both requests at the worker")
        held = wrapper.proc.memory_kib("VmRSS") - resident_before
    finally:
        sender.join(60)
    assert statuses == [200, 200]
    assert held < 40 * MIB, f"the wrapper held {held // MIB} MiB more while the worker worked"
    wait_idle(wrapper)
