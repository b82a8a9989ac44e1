"""Failover, mid-stream failures, cancellation and timeouts, injected into real processes."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import pytest

from tests.support.procs import get_json, wait_until
from tests.support.servers import routable, sdk_client, start_worker, start_wrapper, unique_model


def chat_body(model: str, text: str = "hello there", stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def sse_data(lines) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def ticks(path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def wait_idle(wrapper) -> None:
    wait_until(lambda: get_json(wrapper.url + "/health")[1]["in_flight"] == 0, 5, "the wrapper to free every slot")


def write_config(tmp_path, text: str):
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(params=["random", "least_in_flight"])
def balanced_wrapper(request, procs, consul, tmp_path):
    return start_wrapper(procs, consul, "--config", write_config(tmp_path, f"wrapper:\n  balancer: {request.param}\n"))


def test_kill_9_under_load_loses_no_request(procs, consul, balanced_wrapper):
    wrapper = balanced_wrapper
    model = unique_model()
    doomed = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 5, "routable")

    async def load() -> tuple[list[int], list[str]]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=wrapper.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=16)) as client:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    if i == 150:
                        doomed.proc.signal(signal.SIGKILL)
                    r = await client.post("/chat/completions", json=chat_body(model, f"request {i}"))
                    statuses.append(r.status_code)

            await asyncio.gather(*(one(i) for i in range(500)))

            async def stream(i: int) -> str:
                async with client.stream("POST", "/chat/completions", json=chat_body(model, f"s {i}", True)) as r:
                    return sse_data([line async for line in r.aiter_lines()])[-1]

            lasts = await asyncio.gather(*(stream(i) for i in range(20)))
        return statuses, lasts

    statuses, lasts = asyncio.run(load())
    assert not doomed.proc.alive()
    assert len(statuses) == 500 and set(statuses) == {200}
    assert lasts == ["[DONE]"] * 20
    wait_idle(wrapper)


def test_worker_dying_mid_stream_ends_with_an_error_event(procs, consul, wrapper, schemas):
    model = unique_model("ticks")
    worker = start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model,
                          "--delay", "0.1", "--words", "100")
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                      timeout=10) as r:
        lines = r.iter_lines()
        seen = []
        for line in lines:
            seen.append(line)
            if len(sse_data(seen)) == 3:
                worker.proc.signal(signal.SIGKILL)
                break
        seen.extend(lines)
    events = sse_data(seen)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    schemas.validate("ErrorResponse", last)
    assert last["error"]["code"] == "worker_failed"
    wait_idle(wrapper)


def test_a_worker_dying_before_its_first_event_is_failed_over_within_the_stream(procs, consul, wrapper):
    """Issue #15: a worker that accepted a stream (ACCEPTED: its head goes out at once, and the wrapper
    passes the head on) dies before its first event — a model server crashing during the prompt's
    processing. The client has seen no event yet, so the wrapper sends the request to another instance and
    that answer goes on in the same stream: the openai SDK reads one whole answer."""
    model, other = unique_model("accepting"), unique_model("other")
    dying = start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model,
                         "--accept", "--first-delay", "120", "--words", "3")
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    with sdk_client(wrapper, model) as client:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                stream=True)  # back once the head came: the model "works"
        start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", f"{model},{other}",
                     "--words", "3", "--delay", "0.01")
        wait_until(lambda: routable(wrapper, other), 10, "the second worker in the wrapper's table")
        dying.proc.signal(signal.SIGKILL)
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 "
    assert chunks[-1].choices[0].finish_reason == "stop"
    wait_idle(wrapper)


@pytest.mark.parametrize("generator", ["AsyncTickGen", "SyncTickGen"])
def test_client_hangup_stops_the_generator(procs, consul, wrapper, tmp_path, generator):
    model = unique_model("ticks")
    tick_file = tmp_path / "ticks"
    start_worker(procs, consul, f"tests.support.fault_generators.{generator}", "--models", model, "--delay", "0.1",
                 "--words", "100", "--tick-file", str(tick_file))
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                      timeout=10) as r:
        received = 0
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received == 3:
                break
    # the connection is closed here; within 1 s the worker must stop producing
    time.sleep(1.0)
    after_hangup = ticks(tick_file)
    time.sleep(1.0)
    assert 0 < ticks(tick_file) == after_hangup < 100  # 0 would mean the tick file was never written
    wait_idle(wrapper)


def test_client_hangup_on_a_json_request_stops_the_generator(procs, consul, wrapper, tmp_path):
    model = unique_model("ticks")
    tick_file = tmp_path / "ticks"
    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--delay", "0.1",
                 "--words", "100", "--tick-file", str(tick_file))
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(wrapper.base_url + "/chat/completions", json=chat_body(model), timeout=0.5)
    time.sleep(1.0)
    after_hangup = ticks(tick_file)
    time.sleep(1.0)
    assert 0 < ticks(tick_file) == after_hangup < 100
    wait_idle(wrapper)


@pytest.fixture
def strict_wrapper(procs, consul, tmp_path):
    config = write_config(tmp_path, "wrapper:\n  max_attempts: 1\n  timeouts:\n    connect: 0.5\n"
                                    "    first_byte: 0.5\n    idle: 0.5\n    total: 2.0\n")
    return start_wrapper(procs, consul, "--config", config)


def test_first_byte_timeout_is_504(procs, consul, strict_wrapper, schemas):
    model = unique_model("slow")
    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--first-delay", "3")
    wait_until(lambda: routable(strict_wrapper, model), 5, "routable")
    for stream in (False, True):
        r = httpx.post(strict_wrapper.base_url + "/chat/completions", json=chat_body(model, stream=stream), timeout=10)
        assert r.status_code == 504
        schemas.validate("ErrorResponse", r.json())
        assert r.json()["error"]["type"] == "timeout" and r.json()["error"]["code"] == "first_byte_timeout"
    wait_idle(strict_wrapper)


def test_idle_timeout_ends_a_stream_with_an_error_event(procs, consul, strict_wrapper):
    model = unique_model("stall")
    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--delay", "3")
    wait_until(lambda: routable(strict_wrapper, model), 5, "routable")
    with httpx.stream("POST", strict_wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                      timeout=10) as r:
        events = sse_data(list(r.iter_lines()))
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "w0 "
    assert json.loads(events[-1])["error"]["code"] == "idle_timeout"
    assert "[DONE]" not in events
    wait_idle(strict_wrapper)


def test_total_deadline_ends_a_long_stream(procs, consul, strict_wrapper):
    model = unique_model("long")
    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--delay", "0.2",
                 "--words", "100")
    wait_until(lambda: routable(strict_wrapper, model), 5, "routable")
    with httpx.stream("POST", strict_wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                      timeout=10) as r:
        events = sse_data(list(r.iter_lines()))
    assert 3 < len(events) < 100
    error = json.loads(events[-1])["error"]
    assert error["type"] == "timeout" and error["code"] == "total_timeout"
    wait_idle(strict_wrapper)


def test_connect_timeout_is_504(procs, consul, strict_wrapper):
    """An instance whose accept queue is full never completes the TCP handshake."""
    model = unique_model("blackhole")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        register = {"Name": "blackhole", "ID": f"blackhole-{port}", "Address": "127.0.0.1", "Port": port,
                    "Tags": ["openai-api-wrapper", f"model={model}"]}
        httpx.put(f"http://{consul.addr}/v1/agent/service/register", json=register).raise_for_status()
        wait_until(lambda: routable(strict_wrapper, model), 5, "routable")
        r = httpx.post(strict_wrapper.base_url + "/chat/completions", json=chat_body(model), timeout=10)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "connect_timeout"
        wait_idle(strict_wrapper)
    finally:
        httpx.put(f"http://{consul.addr}/v1/agent/service/deregister/blackhole-{port}")
        for s in fillers:
            s.close()
        hole.close()


def test_saturated_worker_answers_429_and_the_wrapper_fails_over(procs, consul, wrapper, tmp_path, schemas):
    model = unique_model("busy")
    config = write_config(tmp_path, "worker:\n  max_queue: 0\n")
    busy = start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--delay", "0.05",
                        "--words", "10", "--max-concurrency", "1", "--config", config)
    wait_until(lambda: routable(wrapper, model), 5, "routable")

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(wrapper.base_url + "/chat/completions", json=chat_body(model))
                                          for _ in range(n)))

    alone = asyncio.run(burst(6))
    refused = [r for r in alone if r.status_code == 429]
    assert refused and len(refused) < 6
    schemas.validate("ErrorResponse", refused[0].json())
    assert refused[0].headers["retry-after"]

    start_worker(procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", model, "--delay", "0.05",
                 "--words", "10")
    wait_until(lambda: len(consul_passing(consul, "async-tick-gen")) == 2, 5, "both workers healthy")
    time.sleep(0.5)  # let the wrapper's blocking query deliver the second instance
    shared = asyncio.run(burst(6))
    assert [r.status_code for r in shared] == [200] * 6
    assert busy.proc.alive()
    wait_idle(wrapper)


def consul_passing(consul, service: str) -> list:
    return get_json(f"http://{consul.addr}/v1/health/service/{service}?passing=1")[1]


def test_generator_failing_mid_stream_ends_with_an_error_event(procs, consul, wrapper, schemas):
    model = unique_model("failing")
    worker = start_worker(procs, consul, "tests.support.fault_generators.FailingStreamGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=chat_body(model, stream=True),
                      headers={"X-Request-ID": "rid-broken-stream"}, timeout=10) as r:
        assert r.status_code == 200
        events = sse_data(list(r.iter_lines()))
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == ["one ", "two "]
    assert "[DONE]" not in events
    error = json.loads(events[-1])
    schemas.validate("ErrorResponse", error)
    assert error["error"]["type"] == "server_error" and "broke" not in events[-1]
    assert "rid-broken-stream" in worker.proc.output()  # the failure is logged with the request id
    wait_idle(wrapper)
