"""Registration, discovery and routing against a real Consul agent and real processes."""
from __future__ import annotations

import os
import signal
import subprocess

import httpx
import openai
import pytest

from tests.support.procs import ROOT, free_port, get_json, post, python_script, wait_until
from tests.support.servers import INSIDER, SECRET_ENV, routable, start_worker, start_wrapper, unique_model


def chat(wrapper, model, text="hi"):
    return post(wrapper.base_url + "/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}]})


def test_models_follow_workers(procs, consul, wrapper):
    model = unique_model()
    assert not routable(wrapper, model)
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 3, "the new worker to be routable")
    status, _, body = chat(wrapper, model, "routed")
    assert status == 200 and b'"routed"' in body
    worker.proc.signal(signal.SIGTERM)
    wait_until(lambda: not routable(wrapper, model), 3, "the stopped worker to leave /v1/models")


def test_sigterm_deregisters_and_exits_zero(procs, consul, wrapper):
    model = unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    assert any(s.endswith(f"-{worker.port}") for s in consul.services())
    worker.proc.signal(signal.SIGTERM)
    assert worker.proc.popen.wait(15) == 0
    assert not any(s.endswith(f"-{worker.port}") for s in consul.services())
    assert "deregistered" in worker.proc.output()
    wait_until(lambda: not routable(wrapper, model), 3, "the stopped worker to leave /v1/models")
    status, _, body = chat(wrapper, model)
    assert status == 503, body
    assert httpx.Response(status, content=body).json()["error"]["code"] == "no_healthy_worker"


def test_sigint_also_deregisters(procs, consul):
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", unique_model())
    worker.proc.signal(signal.SIGINT)
    assert worker.proc.popen.wait(15) == 0
    assert not any(s.endswith(f"-{worker.port}") for s in consul.services())


def test_kill_9_is_removed_by_the_health_check(procs, consul, wrapper, schemas):
    model = unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 3, "routable")
    worker.proc.signal(signal.SIGKILL)
    wait_until(lambda: not routable(wrapper, model), 5, "the killed worker to fail its health check")
    status, _, body = chat(wrapper, model)
    assert status == 503
    schemas.validate("ErrorResponse", httpx.Response(status, content=body).json())


def test_two_workers_of_one_model_share_traffic(procs, consul):
    model = unique_model()
    # the secret: a worker's /health reports `served` only to a caller with it
    a = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, env=SECRET_ENV)
    b = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, env=SECRET_ENV)
    wrapper = start_wrapper(procs, consul, env=SECRET_ENV)
    wait_until(lambda: routable(wrapper, model), 10, "routable")

    def both_served() -> bool:
        assert chat(wrapper, model)[0] == 200
        return all(get_json(w.url + "/health", INSIDER)[1]["served"] > 0 for w in (a, b))

    wait_until(both_served, 10, "both workers to receive requests", interval=0)


def test_one_worker_several_models(procs, consul, wrapper):
    m1, m2 = unique_model(), unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", f"{m1},{m2}", "--svc-name", "multi")
    wait_until(lambda: routable(wrapper, m1) and routable(wrapper, m2), 3, "both models routable")
    for m in (m1, m2):
        status, _, body = chat(wrapper, m, "x")
        assert status == 200
        assert httpx.Response(200, content=body).json()["model"] == m
    models = get_json(wrapper.base_url + "/models")[1]["data"]
    assert {m["owned_by"] for m in models if m["id"] in (m1, m2)} == {"multi"}


def test_worker_exits_cleanly_when_consul_is_unreachable():
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    out = subprocess.run(python_script("template_worker.py", "127.0.0.1", str(port), "generators.echo.EchoGen"),
                         env={"CONSUL_HTTP_ADDR": dead, "PATH": "/usr/bin:/bin"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and dead in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_generator_path_is_a_clear_error():
    out = subprocess.run(python_script("template_worker.py", "127.0.0.1", "1", "generators.nope.Gen"),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot import 'generators.nope.Gen'" in out.stderr and "Traceback" not in out.stderr


def test_sigterm_drains_a_running_stream(procs, consul, wrapper):
    model = unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--delay", "0.1")
    wait_until(lambda: routable(wrapper, model), 3, "routable")
    text = " ".join(f"w{i}" for i in range(15))  # about 1.5 s of streaming
    client = openai.OpenAI(base_url=wrapper.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model=model, stream=True, messages=[{"role": "user", "content": text}])
    first = next(stream)
    worker.proc.signal(signal.SIGTERM)
    rest = list(stream)
    assert first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in rest) == text
    assert rest[-1].choices[0].finish_reason == "stop"
    assert worker.proc.popen.wait(15) == 0


def test_several_wrapper_processes_share_one_port(procs, consul):
    model = unique_model()
    # the secret: the wrapper's /health shows its pid only to a caller with it
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, env=SECRET_ENV)
    wrapper = start_wrapper(procs, consul, "--processes", "2", env=SECRET_ENV)
    pids = set()

    def both_processes_route() -> bool:
        # a fresh connection each time, so the kernel spreads them over the processes
        pids.add(httpx.get(wrapper.url + "/health", headers=INSIDER).json()["pid"])
        return len(pids) == 2 and routable(wrapper, model)

    wait_until(both_processes_route, 10, "two processes answering on one port", interval=0)
    for _ in range(20):
        assert chat(wrapper, model)[0] == 200
    wrapper.proc.signal(signal.SIGTERM)
    assert wrapper.proc.popen.wait(20) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_generator_failing_at_startup_exits_1_without_registering(procs, consul):
    worker = start_worker(procs, consul, "openai_worker", script="openai_worker.py", wait=False,
                          env={"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    assert worker.proc.popen.wait(30) == 1
    assert "cannot list the models" in worker.proc.output()
    assert not any(s.endswith(f"-{worker.port}") for s in consul.services())


def test_a_new_wrapper_routes_as_soon_as_it_is_up(procs, consul):
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wrapper = start_wrapper(procs, consul)  # returns once /health answers
    assert routable(wrapper, model)


def test_advertised_address_is_registered_and_routed(procs, consul, wrapper):
    model = unique_model()
    port = free_port()
    proc = procs.start(f"worker-{port}", python_script("template_worker.py", "0.0.0.0", str(port),
                                                       "generators.echo.EchoGen", "--models", model,
                                                       "--advertise", "127.0.0.2"),
                       env={"CONSUL_HTTP_ADDR": consul.addr})
    wait_until(lambda: routable(wrapper, model), 10, f"the worker to register\n{proc.output()}")
    entry = consul.services()[f"echo-127.0.0.2-{port}"]
    assert (entry["Address"], entry["Port"]) == ("127.0.0.2", port)
    assert chat(wrapper, model)[0] == 200
