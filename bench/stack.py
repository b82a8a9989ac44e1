"""The processes a benchmark run starts, all on free loopback ports, and how to watch their CPU and memory.

Reuses tests/support/procs.py (the test suite's Consul dev agent and process helpers). Every process is started
in its own session (so its group can be killed) and stopped by `Stack.stop_all()`, whatever happened.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Consul, Proc, Procs, free_port, get_json, python_script, wait_until

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_VENV = ROOT / ".venv-bench"


# ---- /proc readings ----------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx's and LiteLLM's worker processes)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants, from /proc/PID/stat."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5): utime, stime
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of one process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem, "python": sys.version.split()[0],
            "kernel": os.uname().release, "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


# ---- processes ---------------------------------------------------------------------------------

@dataclass
class Service:
    name: str
    proc: Proc
    port: int
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def _stop_group(proc: Proc) -> None:
    """SIGTERM the process, then SIGKILL whatever is left of its process group (its own session)."""
    try:
        proc.stop(timeout=15)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Stack:
    def __init__(self, workdir: Path, log=print) -> None:
        self.workdir = workdir
        self.log = log
        self.procs = Procs()
        self.consul: Consul | None = None
        self.services: dict[str, Service] = {}
        self._stopped: set[int] = set()

    # every process goes through Procs, so stop_all() reaches it
    def stop_all(self) -> None:
        for proc in reversed(self.procs.started):
            self._stop(proc)

    def pids(self) -> list[int]:
        """Every process this run started that is still running (Consul included)."""
        return [p.pid for p in self.procs.started if p.pid not in self._stopped and p.alive()]

    def stop(self, name: str) -> None:
        """Stop one started service early (to free the CPU for the phases after it)."""
        svc = self.services.pop(name, None)
        if svc is not None:
            self._stop(svc.proc)

    def _stop(self, proc: Proc) -> None:
        if proc.pid in self._stopped:
            return
        self._stopped.add(proc.pid)
        try:
            _stop_group(proc)
        except Exception as exc:  # keep stopping the others
            print(f"bench: could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)

    def dump(self) -> str:
        return self.procs.dump()

    def start_consul(self) -> Consul:
        self.consul = Consul(self.procs, name="consul")
        return self.consul

    @property
    def consul_env(self) -> dict[str, str]:
        assert self.consul is not None
        return {"CONSUL_HTTP_ADDR": self.consul.addr}

    def start_worker(self, name: str, *args: str, generator: str = "generators.echo.EchoGen",
                     register_timeout: float = 30) -> Service:
        """A worker registered in Consul; a model worker gets `register_timeout` to load its model."""
        port = free_port()
        proc = self.procs.start(name, python_script("template_worker.py", "127.0.0.1", str(port), generator, *args),
                                env={**self.consul_env, "HF_HUB_OFFLINE": "1"})
        assert self.consul is not None

        def registered() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{name} exited\n{proc.output()[-3000:]}")
            return f"-127.0.0.1-{port}" in " ".join(self.consul.services())

        wait_until(registered, register_timeout, f"{name} on {port} to register\n{proc.output()[-3000:]}",
                   interval=0.05 if register_timeout <= 30 else 0.5)
        svc = self.services[name] = Service(name, proc, port)
        return svc

    def start_wrapper(self, name: str = "wrapper", *args: str) -> Service:
        port = free_port()
        proc = self.procs.start(name, python_script("main_openai_wrapper_v2.py", "127.0.0.1", str(port),
                                                    "--log-level", "warning", *args), env=self.consul_env)
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 30, f"{name}\n{proc.output()}")
        svc = self.services[name] = Service(name, proc, port)
        return svc

    def wait_routable(self, wrapper: Service, model: str, timeout: float = 30, times: int = 1) -> None:
        """Until `times` lookups in a row find `model` (several: a wrapper with several processes on one
        port answers from any of them, each with its own routing table)."""
        url = f"{wrapper.url}/v1/models/{model}"
        wait_until(lambda: all(get_json(url)[0] == 200 for _ in range(times)), timeout,
                   f"'{model}' to be routable through {wrapper.name}")

    def start_min_app(self) -> Service:
        port = free_port()
        proc = self.procs.start("starlette-min", [sys.executable, str(BENCH / "min_app.py"), str(port)])
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 30, f"min app\n{proc.output()}")
        svc = self.services["starlette-min"] = Service("starlette-min", proc, port)
        return svc

    def start_nginx(self, upstream_port: int) -> Service:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix = self.workdir / "nginx"
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(prefix, 0o755)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream worker {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
        proc = self.procs.start("nginx", [nginx, "-p", str(prefix), "-c", str(conf)])
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 20,
                   f"nginx\n{proc.output()}\n{(prefix / 'error.log').read_text() if (prefix / 'error.log').exists() else ''}")
        svc = self.services["nginx"] = Service("nginx", proc, port)
        return svc

    def start_litellm(self, upstream_port: int, model: str = "echo") -> Service:
        exe = BENCH_VENV / "bin" / "litellm"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} not found: run without --no-install, or pass --no-litellm")
        port = free_port()
        key = "sk-bench-" + secrets.token_urlsafe(32)
        conf = self.workdir / "litellm.yaml"
        conf.write_text(json.dumps({  # JSON is YAML
            "model_list": [{"model_name": model, "litellm_params": {
                "model": f"openai/{model}", "api_base": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "none"}}],
            "general_settings": {"master_key": key},
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }))
        env = {
            "LITELLM_MASTER_KEY": key,
            # no traffic off this machine: the cost map from the package, no telemetry, and any stray
            # outbound HTTP(S) call sent to a closed loopback port instead of the internet
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true", "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }
        proc = self.procs.start("litellm", [str(exe), "--config", str(conf), "--host", "127.0.0.1",
                                            "--port", str(port), "--num_workers", "1"], env=env)
        headers = {"Authorization": f"Bearer {key}"}
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/v1/models", headers)[0] == 200, 180,
                   f"LiteLLM proxy\n{proc.output()[-3000:]}", interval=0.5)
        svc = self.services["litellm"] = Service("litellm", proc, port, {"key": key})
        return svc


def consul_put(addr: str, path: str, body) -> bytes:
    request = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read()


FAKE_NODE = "bench-fake-node"  # the node the bench's fake instances are registered on (no agent runs there)


def fake_ops(sid: str, service: str, tags: list[str], port: int) -> list[dict]:
    """A fake instance as a worker registers itself: the service and a passing check on it. (Nobody runs
    the check on a node without an agent, so it stays as written.) Without a check it would take the
    wrapper's path for hand-made registrations, which re-reads its whole service on every change."""
    return [{"Service": {"Verb": "set", "Node": FAKE_NODE, "Service": {
                "ID": sid, "Service": service, "Tags": tags, "Address": "127.0.0.1", "Port": port}}},
            {"Check": {"Verb": "set", "Check": {"Node": FAKE_NODE, "CheckID": f"check-{sid}", "Name": "fake",
                                                "Status": "passing", "ServiceID": sid}}}]


def register_fakes(addr: str, fakes: list[tuple[str, str, list[str]]], port: int) -> None:
    """(id, service, tags) each, two operations a fake, in transactions of at most 64 (Consul's limit), as
    fast as Consul takes them."""
    ops = [op for sid, service, tags in fakes for op in fake_ops(sid, service, tags, port)]
    for start in range(0, len(ops), 64):
        consul_put(addr, "/v1/txn", ops[start:start + 64])


def now() -> float:
    return time.monotonic()
