"""Prometheus metrics (#10) on real processes: known traffic through a real wrapper to real workers
moves the counters by exactly what was sent, on the wrapper and on the worker, with --processes 2 too;
promtool accepts both /metrics; the Grafana dashboard queries only metrics that exist."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import ROOT, free_port, get_json, post, wait_until
from tests.support.servers import (
    INSIDER,
    SECRET_ENV,
    Server,
    leave_stream_after,
    registered,
    routable,
    start_worker,
    start_wrapper,
    unique_model,
)

CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, frozenset], float]


def scrape(server: Server) -> Samples:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def chat(model: str, text: str = "one two three four", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def write_config(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def stack(module_procs, consul, tmp_path_factory):
    """One wrapper; an EchoGen worker for `model`; a slow ticks worker (one slot, no queue) for `busy`."""
    tmp = tmp_path_factory.mktemp("metrics")
    model, busy = unique_model(), unique_model("ticks")
    worker = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model)
    slow = start_worker(module_procs, consul, "tests.support.fault_generators.AsyncTickGen", "--models", busy,
                        "--max-concurrency", "1", "--config", write_config(tmp, "w.yaml", "worker:\n  max_queue: 0\n"),
                        "--delay", "0.1", "--words", "100")
    wrapper = start_wrapper(module_procs, consul)
    wait_until(lambda: routable(wrapper, model) and routable(wrapper, busy), 10, "both models routable")
    return {"wrapper": wrapper, "worker": worker, "slow": slow, "model": model, "busy": busy}


def test_n_requests_move_the_counters_by_n_and_tokens_by_the_answers_usage(stack):
    wrapper, worker, model = stack["wrapper"], stack["worker"], stack["model"]
    w0, k0 = scrape(wrapper), scrape(worker)
    n, prompt, completion = 5, 0, 0
    for i in range(n):
        status, headers, raw = post(wrapper.base_url + "/chat/completions", chat(model, "word " * (i + 1)))
        assert status == 200
        usage = json.loads(raw)["usage"]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
    w1, k1 = scrape(wrapper), scrape(worker)
    assert moved(w0, w1, "oaw_requests_total", model=model, endpoint=CHAT, status="200") == n
    assert moved(w0, w1, "oaw_request_duration_seconds_count", model=model, endpoint=CHAT, stream="false") == n
    assert moved(w0, w1, "oaw_upstream_attempts_total", model=model, outcome="ok") == n
    assert moved(w0, w1, "oaw_gateway_overhead_seconds_count") == n
    assert moved(w0, w1, "oaw_input_tokens_total", model=model) == prompt > 0
    assert moved(w0, w1, "oaw_output_tokens_total", model=model) == completion > 0
    assert value(w1, "oaw_requests_in_flight", model=model) == 0
    assert moved(k0, k1, "oaw_worker_requests_total", model=model, endpoint=CHAT, status="200") == n
    assert moved(k0, k1, "oaw_worker_input_tokens_total", model=model) == prompt
    assert moved(k0, k1, "oaw_worker_output_tokens_total", model=model) == completion
    assert value(w1, "oaw_instances", model=model) == 1
    assert value(w1, "oaw_consul_up") == 1
    assert 0 <= value(w1, "oaw_discovery_last_heard_seconds") < 60


def test_a_stream_is_one_ttft_observation_and_its_usage_chunk_counts(stack):
    wrapper, worker, model = stack["wrapper"], stack["worker"], stack["model"]
    w0, k0 = scrape(wrapper), scrape(worker)
    body = chat(model, "a b c d e f g", stream=True, stream_options={"include_usage": True})
    usage = None
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        timing = resp.headers["server-timing"]
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None
    assert re.fullmatch(r"gateway;dur=\d+\.\d+, worker;dur=\d+\.\d+", timing), timing
    w1, k1 = scrape(wrapper), scrape(worker)
    assert moved(w0, w1, "oaw_time_to_first_token_seconds_count", model=model) == 1
    assert moved(w0, w1, "oaw_time_per_output_chunk_seconds_count", model=model) == 1
    assert moved(w0, w1, "oaw_request_duration_seconds_count", model=model, stream="true") == 1
    assert moved(w0, w1, "oaw_requests_total", model=model, status="200") == 1
    assert moved(w0, w1, "oaw_input_tokens_total", model=model) == usage["prompt_tokens"]
    assert moved(w0, w1, "oaw_output_tokens_total", model=model) == usage["completion_tokens"] == 7
    assert moved(k0, k1, "oaw_worker_time_to_first_token_seconds_count", model=model) == 1
    assert moved(k0, k1, "oaw_worker_output_tokens_total", model=model) == 7


def test_server_timing_splits_the_wrappers_time_from_the_workers(stack):
    status, headers, _ = post(stack["wrapper"].base_url + "/chat/completions", chat(stack["model"]))
    assert status == 200
    parts = dict(p.strip().split(";dur=") for p in headers["server-timing"].split(","))
    assert set(parts) == {"gateway", "worker"}
    assert float(parts["gateway"]) >= 0 and float(parts["worker"]) > 0


def test_unknown_models_and_bad_input_are_rejections_without_their_names(stack):
    wrapper = stack["wrapper"]
    before = scrape(wrapper)
    nobody = "not-a-model-" + unique_model()
    assert post(wrapper.base_url + "/chat/completions", chat(nobody))[0] == 404
    assert post(wrapper.base_url + "/chat/completions", b"{not json")[0] == 400
    assert post(wrapper.base_url + "/chat/completions", b"x" * (5 * 1024 * 1024))[0] == 413
    after = scrape(wrapper)
    assert moved(before, after, "oaw_rejections_total", reason="not_found") == 1
    assert moved(before, after, "oaw_rejections_total", reason="invalid_request") == 1
    assert moved(before, after, "oaw_rejections_total", reason="body_size") == 1
    assert moved(before, after, "oaw_requests_total", model="unknown", status="404") == 1
    assert not any(nobody in str(labels) for _, labels in after)  # the label space stays bounded


def test_failover_counts_the_failed_attempt_and_the_failover(stack, consul):
    wrapper, worker, model = stack["wrapper"], stack["worker"], stack["model"]
    dead_port = free_port()  # nothing listens: connecting is refused
    with registered(consul, "metrics-dead", dead_port, model) as dead_id:
        wait_until(lambda: value(scrape(wrapper), "oaw_instances", model=model) == 2, 10, "the dead instance routed")
        before = scrape(wrapper)
        sent = 0

        def failed_over() -> bool:
            nonlocal sent
            sent += 1
            assert post(wrapper.base_url + "/chat/completions", chat(model))[0] == 200
            return moved(before, scrape(wrapper), "oaw_failovers_total", reason="worker_unreachable") >= 1

        wait_until(failed_over, 30, "a request to try the dead instance first", interval=0)
        after = scrape(wrapper)
        assert moved(before, after, "oaw_failovers_total", reason="worker_unreachable") == 1
        assert moved(before, after, "oaw_upstream_attempts_total", worker=dead_id,
                     outcome="worker_unreachable") == 1
        live = f"-127.0.0.1-{worker.port}"
        ok = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "oaw_upstream_attempts_total"
                 and dict(k[1])["worker"].endswith(live) and dict(k[1])["outcome"] == "ok")
        assert ok == sent
        assert moved(before, after, "oaw_requests_total", model=model, status="200") == sent
        assert value(after, "oaw_instances_cooling_down", model=model) == 1  # the dead one, for wrapper.cooldown


def test_a_busy_worker_counts_its_429_and_the_wrapper_its_rejection_and_a_disconnect(stack):
    wrapper, slow, busy = stack["wrapper"], stack["slow"], stack["busy"]
    w0, k0 = scrape(wrapper), scrape(slow)
    holder = threading.Thread(target=leave_stream_after,
                              args=(wrapper.base_url + "/chat/completions", chat(busy, stream=True), 30))
    holder.start()  # takes the worker's only slot for ~30 events, then hangs up
    try:
        wait_until(lambda: value(scrape(slow), "oaw_worker_requests_in_flight", model=busy) == 1, 10,
                   "the stream to hold the slot")
        status, _, raw = post(wrapper.base_url + "/chat/completions", chat(busy))
        assert status == 429, raw
    finally:
        holder.join(30)
    w1, k1 = scrape(wrapper), scrape(slow)
    refused = moved(w0, w1, "oaw_upstream_attempts_total", model=busy, outcome="busy")
    assert refused >= 1
    assert moved(k0, k1, "oaw_worker_concurrency_rejections_total") == refused
    assert moved(k0, k1, "oaw_worker_requests_total", model=busy, status="429") == refused
    assert moved(w0, w1, "oaw_rejections_total", reason="concurrency") == 1
    assert moved(w0, w1, "oaw_requests_total", model=busy, status="429") == 1
    wait_until(lambda: moved(w0, scrape(wrapper), "oaw_client_disconnects_total", model=busy) == 1, 10,
               "the wrapper to count the client that left mid-stream")
    wait_until(lambda: value(scrape(wrapper), "oaw_requests_in_flight", model=busy) == 0, 10, "in-flight back to 0")


def _promtool(server: Server) -> subprocess.CompletedProcess:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read()
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)


def test_promtool_accepts_both_endpoints(stack):
    post(stack["wrapper"].base_url + "/chat/completions", chat(stack["model"]))  # some traffic in every series
    for server in (stack["wrapper"], stack["worker"], stack["slow"]):
        result = _promtool(server)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            exprs.extend(v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\boaw_[a-z_]+\b", expr)}


def test_every_metric_the_grafana_dashboard_queries_exists(stack):
    exposed: set[str] = set()
    for server in (stack["wrapper"], stack["worker"]):
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        exposed |= set(re.findall(r"^(oaw_[a-z_]+)[{ ]", text, re.M))  # samples
        for name, kind in re.findall(r"^# TYPE (oaw_[a-z_]+) (\w+)", text, re.M):  # series with no sample yet
            exposed |= {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    used = _dashboard_metrics()
    assert len(used) >= 10
    assert not used - exposed, f"the dashboard queries metrics /metrics does not have: {sorted(used - exposed)}"


def _sum_is_right(wrapper: Server, model: str, n: int, scrape_times: int = 6) -> Callable[[], bool]:
    return lambda: all(value(scrape(wrapper), "oaw_requests_total", model=model, status="200") == n
                       for _ in range(scrape_times))


def test_with_two_processes_metrics_are_the_sum_over_both(procs, consul, stack):
    model = stack["model"]
    wrapper = start_wrapper(procs, consul, "--processes", "2", env=SECRET_ENV)  # the secret: /health shows pids
    wait_until(lambda: all(routable(wrapper, model) for _ in range(10)), 20, "routable in both processes")
    pids: set[int] = set()

    def both_processes_answered() -> bool:  # so the sum below is over two processes' counts
        pids.add(get_json(wrapper.url + "/health", INSIDER)[1]["pid"])
        return len(pids) == 2

    wait_until(both_processes_answered, 20, "both processes to answer")
    n = 24
    for _ in range(n):  # a new connection each time: the kernel spreads them over the two processes
        assert post(wrapper.base_url + "/chat/completions", chat(model))[0] == 200
    # every scrape, whichever process answers it, shows the sum over both
    wait_until(_sum_is_right(wrapper, model, n), 10, f"oaw_requests_total == {n} in every scrape")
    samples = scrape(wrapper)
    assert value(samples, "oaw_upstream_attempts_total", model=model, outcome="ok") == n
    assert value(samples, "oaw_requests_in_flight", model=model) == 0
    assert value(samples, "oaw_instances", model=model) == 1  # read from the answering process's own table


def test_metrics_off_means_no_route_and_no_server_timing(procs, consul, stack, tmp_path):
    wrapper = start_wrapper(procs, consul, "--config", write_config(tmp_path, "off.yaml", "metrics:\n  enabled: false\n"))
    wait_until(lambda: routable(wrapper, stack["model"]), 10, "routable")
    status, body = get_json(wrapper.url + "/metrics")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    status, headers, _ = post(wrapper.base_url + "/chat/completions", chat(stack["model"]))
    assert status == 200 and "server-timing" not in {h.lower() for h in headers}
