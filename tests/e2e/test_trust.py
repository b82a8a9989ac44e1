"""The wrapper routes only to the workers it means to (issue #9, part A), against a real Consul agent and
real processes: anything that can write to Consul's catalog could otherwise claim a model and receive its
prompts (and the worker secret).

- `wrapper.routes` keeps a service the rule does not name off a model, with one warning;
- malformed registrations are skipped, cost no request of the model's good instances and do not stop the
  watch of their service;
- a stale registration whose port another worker took goes critical, because the worker's /health
  answers 503 to a check that asks for another service id.
"""
from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.procs import Consul, Procs, free_port, get_json, post, wait_until
from tests.support.servers import INSIDER, SECRET_ENV, Server, routable, start_worker, start_wrapper, unique_model

MARKER_TAG = "openai-api-wrapper"  # what a worker's registration carries (svc_mgr/entry.py)
ECHO = "generators.echo.EchoGen"


def chat(wrapper: Server, model: str) -> tuple[int, bytes]:
    status, _, body = post(wrapper.base_url + "/chat/completions",
                           {"model": model, "messages": [{"role": "user", "content": "whose answer?"}]})
    return status, body


def served(worker: Server) -> int:
    return get_json(worker.url + "/health", INSIDER)[1]["served"]


def log_lines(server: Server, *words: str) -> list[str]:
    return [line for line in server.proc.output().splitlines() if all(w in line for w in words)]


def wrapper_with(procs: Procs, consul: Consul, tmp_path, config: str) -> Server:
    path = tmp_path / "env.yaml"
    path.write_text(config)
    return start_wrapper(procs, consul, "--config", str(path), env=SECRET_ENV)


class Catalog:
    """Registrations made straight through Consul's HTTP API, as any holder of a write token could;
    removed again at teardown so no other test's wrapper sees them."""

    def __init__(self, consul: Consul) -> None:
        self.consul = consul
        self.ids: list[str] = []

    def _put(self, path: str, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://{self.consul.addr}/v1/agent/{path}", data=data, method="PUT")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200

    def register(self, id: str, name: str, address: str, port: int, models: list[str],
                 check: dict | None = None) -> None:
        body = {"ID": id, "Name": name, "Address": address, "Port": port,
                "Tags": [MARKER_TAG, *(f"model={m}" for m in models)]}
        if check is not None:
            body["Check"] = check
        self._put("service/register", body)
        self.ids.append(id)

    def checks(self, service: str) -> list[dict]:
        return get_json(f"http://{self.consul.addr}/v1/health/checks/{service}")[1]

    def agent_checks(self) -> list[dict]:
        """The agent's own view: the catalog's copy of a check's output is refreshed only when its status
        changes (or every few minutes), the agent's after every run."""
        return list(get_json(f"http://{self.consul.addr}/v1/agent/checks")[1].values())

    def remove_all(self) -> None:
        for id in self.ids:
            self._put(f"service/deregister/{id}")


@pytest.fixture
def catalog(consul) -> Iterator[Catalog]:
    catalog = Catalog(consul)
    yield catalog
    catalog.remove_all()


class RogueListener:
    """An EchoGen-like worker of the rogue's own: answers every chat request in OpenAI's shape and counts
    what reached it."""

    def __init__(self) -> None:
        self.hits = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                listener.hits += 1
                answer = json.dumps({
                    "id": "chatcmpl-rogue", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "rogue"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rogue_listener() -> Iterator[RogueListener]:
    listener = RogueListener()
    yield listener
    listener.stop()


def test_a_rogue_service_gets_no_traffic_for_a_model_its_rule_does_not_give_it(procs, consul, catalog,
                                                                                 rogue_listener, tmp_path):
    tag = uuid.uuid4().hex[:8]
    legit, rogue, guarded = f"legit-{tag}", f"rogue-{tag}", unique_model("guarded")
    wrapper = wrapper_with(procs, consul, tmp_path, f"wrapper:\n  routes:\n    {guarded}: [{legit}]\n")
    worker = start_worker(procs, consul, ECHO, "--models", guarded, "--svc-name", legit, env=SECRET_ENV)
    wait_until(lambda: routable(wrapper, guarded), 10, "the legitimate worker to be routable")

    # no health check at all, so Consul lists it as passing
    catalog.register(f"{rogue}-1", rogue, "127.0.0.1", rogue_listener.port, [guarded])
    wait_until(lambda: log_lines(wrapper, "WARNING", repr(rogue), repr(guarded)), 10,
               f"the wrapper to refuse {rogue} for {guarded}\n{wrapper.proc.output()}")
    statuses = [chat(wrapper, guarded)[0] for _ in range(30)]
    assert statuses == [200] * 30
    assert rogue_listener.hits == 0
    assert served(worker) == 30

    # more Consul updates of the rogue service: it now also claims a model no rule guards, which it may
    # serve (so the listener is reachable and the wrapper did read the update), and still not `guarded`
    unguarded = unique_model("open")
    catalog.register(f"{rogue}-1", rogue, "127.0.0.1", rogue_listener.port, [guarded, unguarded])
    wait_until(lambda: routable(wrapper, unguarded), 10, "the rogue's unguarded model to be routable")
    assert chat(wrapper, unguarded)[0] == 200 and rogue_listener.hits == 1
    assert [chat(wrapper, guarded)[0] for _ in range(5)] == [200] * 5 and rogue_listener.hits == 1
    refused = log_lines(wrapper, "WARNING", repr(rogue), repr(guarded))
    assert len(refused) == 1, refused


def test_malformed_registrations_are_skipped_and_the_watch_goes_on(procs, consul, catalog, tmp_path):
    service, model = f"mixed-{uuid.uuid4().hex[:8]}", unique_model()
    wrapper = wrapper_with(procs, consul, tmp_path, "wrapper:\n  max_attempts: 3\n")
    good = start_worker(procs, consul, ECHO, "--models", model, "--svc-name", service, env=SECRET_ENV)
    wait_until(lambda: routable(wrapper, model), 10, "the good worker to be routable")

    dead = free_port()  # nothing listens here: a request routed to a bad entry would fail
    bad = {
        "port-0": ("127.0.0.1", 0, [model]),
        "port-70000": ("127.0.0.1", 70000, [model]),
        "path": ("127.0.0.1/evil", dead, [model]),
        "userinfo": ("user@127.0.0.1", dead, [model]),
        "space": ("127.0.0.1", dead, [model, "two words"]),
        "long-name": ("127.0.0.1", dead, [model, "x" * 300]),
        "2000-models": ("127.0.0.1", dead, [model, *(f"{model}-{i}" for i in range(1999))]),
    }
    # each with a passing check, so Consul offers it like any healthy instance of the service (discovery
    # follows checked instances; an unchecked one in a checked service is not routed at all)
    for name, (address, port, models) in bad.items():
        catalog.register(f"{service}-bad-{name}", service, address, port, models,
                         check={"TTL": "10m", "Status": "passing"})
    for name in bad:
        wait_until(lambda name=name: log_lines(wrapper, "WARNING", repr(f"{service}-bad-{name}")), 10,
                   f"the wrapper to skip {name}\n{wrapper.proc.output()}")

    statuses = [chat(wrapper, model)[0] for _ in range(20)]
    assert statuses == [200] * 20
    assert served(good) == 20

    later_model = unique_model()
    later = start_worker(procs, consul, ECHO, "--models", later_model, "--svc-name", service, env=SECRET_ENV)
    wait_until(lambda: routable(wrapper, later_model), 10, "a worker registered after the bad entries")
    assert chat(wrapper, later_model)[0] == 200 and served(later) == 1
    for name in bad:  # that update read every bad entry again, and warned no more
        assert len(log_lines(wrapper, "WARNING", repr(f"{service}-bad-{name}"))) == 1, name
    assert "Traceback" not in wrapper.proc.output()


def test_a_stale_registration_on_a_port_another_worker_took_goes_critical(procs, consul, catalog, tmp_path):
    tag = uuid.uuid4().hex[:8]
    wrapper = wrapper_with(procs, consul, tmp_path, "wrapper: {}\n")
    current_service = f"current-{tag}"
    current = start_worker(procs, consul, ECHO, "--models", unique_model(), "--svc-name", current_service, env=SECRET_ENV)

    # what a worker that died without deregistering leaves behind, on the port `current` now holds
    stale_service, stale_model = f"gone-{tag}", unique_model("stale")
    stale_id = f"{stale_service}-127.0.0.1-{current.port}"
    catalog.register(stale_id, stale_service, "127.0.0.1", current.port, [stale_model], check={
        "HTTP": f"http://127.0.0.1:{current.port}/health?id={stale_id}", "Interval": "1s", "Timeout": "1s",
        "Status": "passing"})

    def stale_critical() -> bool:
        return any(c["ServiceID"] == stale_id and c["Status"] == "critical" and "503" in c["Output"]
                   for c in catalog.checks(stale_service))

    wait_until(stale_critical, 15, f"the stale registration's check to go critical: {catalog.checks(stale_service)}")
    wait_until(lambda: not routable(wrapper, stale_model), 10, "the wrapper to drop the stale instance")
    assert chat(wrapper, stale_model)[0] in (404, 503)
    assert served(current) == 0

    # the worker that holds the port passes its own check, which names its own id
    current_id = f"{current_service}-127.0.0.1-{current.port}"

    def own_check_passed() -> bool:
        return any(c["ServiceID"] == current_id and c["Status"] == "passing" and f"?id={current_id}: 200" in c["Output"]
                   for c in catalog.agent_checks())

    wait_until(own_check_passed, 10, f"the current worker's own check to pass: {catalog.agent_checks()}")
