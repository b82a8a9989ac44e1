"""Real processes for the tests: a Consul dev agent and child processes on free loopback ports, with their logs."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until `condition()` is true; returns the seconds it took, fails the test after `timeout`."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def post(url: str, body: bytes | dict, headers: dict[str, str] | None = None, timeout: float = 10):
    """(status, headers, raw body) of a POST; body may be raw bytes to send malformed input."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Proc:
    """A child process whose output goes to a log file, shown when a test fails."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115 (closed in stop())
        self.popen = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A memory figure of the process from /proc (VmRSS: resident now; VmHWM: the peak so far), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"/proc/{self.pid}/status has no {field}")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return self.popen.returncode


class Procs:
    """Every process a test starts, stopped at teardown whatever happened."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, args, env)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    def dump(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.output()[-4000:]}" for p in self.started)


def consul_binary() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "install_consul.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


class Consul:
    """A real Consul dev agent on free ports."""

    def __init__(self, procs: Procs, extra_hcl: str = "", name: str = "consul") -> None:
        self.procs = procs
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.extra_hcl = extra_hcl
        self.name = name
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        ports = (f'ports {{ http = {self.port}, dns = -1, grpc = -1, serf_lan = {free_port()}, '
                 f'serf_wan = {free_port()}, server = {free_port()} }}')
        self.proc = self.procs.start(self.name, [consul_binary(), "agent", "-dev", "-bind", "127.0.0.1",
                                                 "-client", "127.0.0.1", "-log-level", "warn",
                                                 "-hcl", ports, *(["-hcl", self.extra_hcl] if self.extra_hcl else [])])
        wait_until(self._leader, 30, "the Consul agent to elect itself leader")

    def _leader(self) -> bool:
        with urllib.request.urlopen(f"http://{self.addr}/v1/status/leader", timeout=1) as resp:
            return len(json.loads(resp.read())) > 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def services(self, token: str | None = None) -> dict:
        return get_json(f"http://{self.addr}/v1/agent/services", {"X-Consul-Token": token} if token else None)[1]


def python_script(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]
