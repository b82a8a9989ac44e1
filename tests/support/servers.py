"""Workers and wrappers as real processes, registered in a test's Consul agent, and ways to reach them."""
from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
import openai

from common.wire import Capability
from svc_mgr.entry import model_tags
from tests.support.procs import Consul, Proc, Procs, free_port, get_json, python_script, wait_until

# for tests that read what /health shows only to a caller with the worker secret (pid, models, served):
# start the worker(s) and wrapper with `env=SECRET_ENV`, send `INSIDER` with GET /health
TEST_SECRET = "e2e-worker-secret-0123"
SECRET_ENV = {"WORKER_SECRET": TEST_SECRET}
INSIDER = {"X-Worker-Secret": TEST_SECRET}


@dataclass
class Server:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def start_worker(procs: Procs, consul: Consul, generator: str = "generators.echo.EchoGen", *args: str,
                 env: dict[str, str] | None = None, script: str = "template_worker.py", wait: bool = True,
                 register_timeout: float = 20) -> Server:
    port = free_port()
    argv = [generator] if script == "template_worker.py" else []
    proc = procs.start(f"worker-{port}", python_script(script, "127.0.0.1", str(port), *argv, *args),
                       env={"CONSUL_HTTP_ADDR": consul.addr, **(env or {})})
    server = Server(proc, port)
    if wait:
        wait_until(lambda: f"-127.0.0.1-{port}" in " ".join(consul.services()), register_timeout,
                   f"worker on {port} to register\n{proc.output()}")
    return server


def start_model_worker(procs: Procs, consul: Consul, generator: str, *args: str, wait: bool = True) -> Server:
    """A worker hosting a local model: offline, and given time to load it (wait=False: return at once,
    so the caller can do other work while the model loads)."""
    return start_worker(procs, consul, generator, *args, env={"HF_HUB_OFFLINE": "1"}, register_timeout=180,
                        wait=wait)


def start_wrapper(procs: Procs, consul: Consul, *args: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    proc = procs.start(f"wrapper-{port}", python_script("main_openai_wrapper_v2.py", "127.0.0.1", str(port), *args),
                       env={"CONSUL_HTTP_ADDR": consul.addr, **(env or {})})
    server = Server(proc, port)
    wait_until(lambda: get_json(server.url + "/health")[0] == 200, 20, f"wrapper on {port}\n{proc.output()}")
    return server


def routable(wrapper: Server, model: str, headers: dict[str, str] | None = None) -> bool:
    status, body = get_json(wrapper.base_url + "/models", headers)
    return status == 200 and model in {m["id"] for m in body["data"]}


@contextlib.contextmanager
def sdk_client(wrapper: Server, model: str, timeout: float = 60) -> Iterator[openai.OpenAI]:
    """The real openai SDK pointed at the wrapper, once `model` is routable there."""
    wait_until(lambda: routable(wrapper, model), 10, f"{model} to be routable")
    with openai.OpenAI(base_url=wrapper.base_url, api_key="unused", max_retries=0, timeout=timeout) as client:
        yield client


def unique_model(prefix: str = "echo") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_fake_worker(procs: Procs, mode: str, *args: str) -> Server:
    """A misbehaving worker (tests/support/fake_worker.py), not yet registered: see `registered`."""
    port = free_port()
    proc = procs.start(f"fake-{mode}-{port}", [sys.executable, "-m", "tests.support.fake_worker", str(port), mode,
                                              *args])
    server = Server(proc, port)
    wait_until(lambda: get_json(server.url + "/hits")[0] == 200, 20, f"fake worker on {port}\n{proc.output()}")
    return server


def hits(server: Server) -> int:
    return get_json(server.url + "/hits")[1]["hits"]


@contextlib.contextmanager
def registered(consul: Consul, name: str, port: int, model: str,
               capabilities: Iterable[Capability] | None = None) -> Iterator[str]:
    """An instance of `model` at 127.0.0.1:`port`, registered by hand through Consul's HTTP API (no health
    check, so passing) as a worker would register it (claiming no capabilities unless given, as an old
    worker did); deregistered on the way out."""
    service_id = f"{name}-127.0.0.1-{port}"
    entry = {"Name": name, "ID": service_id, "Address": "127.0.0.1", "Port": port,
             "Tags": model_tags([model], capabilities)}
    _consul_put(consul, "register", json.dumps(entry).encode())
    try:
        yield service_id
    finally:
        _consul_put(consul, f"deregister/{service_id}", b"")


def _consul_put(consul: Consul, path: str, data: bytes) -> None:
    request = urllib.request.Request(f"http://{consul.addr}/v1/agent/service/{path}", data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


def leave_stream_after(url: str, body: dict, events: int = 3) -> None:
    """POST a streamed request and hang up after its first `events` events (closing the connection
    mid-answer), as a client that goes away does."""
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == events:
                return
