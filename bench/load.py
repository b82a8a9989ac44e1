"""One load run (wrk, or bench/pyload.py without wrk) with the CPU each watched process used meanwhile."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from .stack import BENCH, cpu_seconds, machine_busy_seconds

WRK_SCRIPT = BENCH / "wrk_post.lua"


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class LoadResult:
    tool: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    client_cores: float                 # CPU-seconds of the load generator per wall second
    cores: dict[str, float] = field(default_factory=dict)  # same for each watched process tree
    machine_cores: float = 0.0          # busy cores of the whole machine meanwhile (/proc/stat)
    other_cores: float = 0.0            # of those, what neither the load generator nor our processes used

    def as_dict(self) -> dict:
        return asdict(self)


def run_load(url: str, body_path: str | None, concurrency: int, duration: float, *, tool: str,
             max_requests: int = 0, auth: str = "", watch: dict[str, int] | None = None,
             ours: list[int] | None = None, timeout_s: float = 10) -> LoadResult:
    """Load `url` with `concurrency` connections for `duration` seconds (or until `max_requests`
    responses, with `duration` as the cap). Bounded in time whatever the server does."""
    watch = watch or {}
    body_arg = body_path or "-"
    if tool == "wrk":
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", f"{timeout_s:g}s",
                "-s", str(WRK_SCRIPT), url, "--", body_arg, str(max_requests), auth]
    else:
        argv = [sys.executable, str(BENCH / "pyload.py"), url, body_arg, str(concurrency), f"{duration:g}",
                str(max_requests), auth]
    ours = ours or []
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    ours_before = sum(map(cpu_seconds, ours))
    busy_before = machine_busy_seconds()
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + duration + timeout_s + 30
        status = None
        interrupted = False
        try:
            while status is None:
                pid, status_, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status = status_
                    break
                # pread: the child shares this file's offset, so never move it while wrk writes
                if (tool == "wrk" and max_requests and not interrupted
                        and b"BENCH_STOPPED" in os.pread(out.fileno(), 1 << 16, 0)):
                    os.kill(proc.pid, signal.SIGINT)  # wrk then joins its thread and prints the summary
                    interrupted = True
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, 9)
                    raise TimeoutError(f"load generator did not finish: {' '.join(argv)}")
                time.sleep(0.02)
        except BaseException:
            if status is None:
                try:
                    os.killpg(proc.pid, 9)
                    os.waitpid(proc.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        after = {name: cpu_seconds(pid) for name, pid in watch.items()}
        ours_used = sum(map(cpu_seconds, ours)) - ours_before
        busy = machine_busy_seconds() - busy_before
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}): {' '.join(argv)}\n{text[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    seconds = r["duration_us"] / 1e6
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    client = rusage.ru_utime + rusage.ru_stime
    return LoadResult(
        tool=tool, concurrency=concurrency, requests=r["requests"], seconds=seconds,
        rps=r["requests"] / seconds if seconds else 0.0,
        p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000, mean_ms=r["mean_us"] / 1000,
        errors=errors, client_cores=client / wall,
        cores={name: (after[name] - before[name]) / wall for name in watch},
        machine_cores=busy / wall,
        other_cores=max(0.0, busy - client - ours_used) / wall if ours else 0.0,
    )
