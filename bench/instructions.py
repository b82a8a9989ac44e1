#!/usr/bin/env python3
"""The wrapper's CPU instructions per request, counted by valgrind's callgrind: a cost figure that other
load on the machine does not move, for A/B comparisons on a shared machine.

    python3 -m bench.instructions [--seconds 12] [--concurrency 1] VARIANT [VARIANT ...]

A VARIANT is `CHECKOUT|CONFIG`: the repository checkout whose wrapper runs (its .venv and
main_openai_wrapper_v2.py; empty: this one) and an env.yaml-style file of overrides (`-`: none). For
example `"|-" "|metrics-off.yaml" "/work/other|-"`. Variants run one after another against one EchoGen
worker and one Consul dev agent.

Per variant: the wrapper starts under callgrind with counting off; after a warm-up, counting runs for
--seconds with no requests (the wrapper's own background: blocking queries, health checks) and then for
--seconds under load (wrk, JSON chat); instructions per request = (loaded - idle) / responses. At
concurrency 1 every request is served alone, so the figure does not depend on how many requests one
event-loop turn finds (which changes with the machine's load); higher concurrency adds that effect back.
Python under valgrind runs about 50x slower: a variant takes about a minute. Needs valgrind (Debian's
package) and wrk. Every process it starts is stopped at the end."""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.procs import ROOT, free_port, get_json, wait_until

from .run import SHORT_TEXT, chat_body, log
from .stack import BENCH, Stack


def _totals(files: list[Path]) -> int:
    """The instructions counted in these callgrind dumps (each dump holds what was counted since the last)."""
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


class Counted:
    """One wrapper under callgrind; `counted(seconds, during)` = instructions over that span."""

    def __init__(self, stack: Stack, name: str, checkout: Path, config: str, out: Path) -> None:
        self.out = out
        self.port = free_port()
        args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                str(checkout / ".venv/bin/python"), str(checkout / "main_openai_wrapper_v2.py"), "127.0.0.1",
                str(self.port), "--log-level", "warning", *([] if config == "-" else ["--config", config])]
        self.proc = stack.procs.start(name, args, env=stack.consul_env)
        self.url = f"http://127.0.0.1:{self.port}"
        self._read: set[Path] = set()

    def wait_routable(self, model: str) -> None:
        def routable() -> bool:
            try:
                return any(m["id"] == model for m in get_json(self.url + "/v1/models", timeout=30)[1].get("data", []))
            except OSError:
                return False
        wait_until(routable, 300, f"the wrapper under valgrind to route {model}")

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], capture_output=True, timeout=60)

    def counted(self, during: subprocess.Popen | None, seconds: float) -> int:
        self._control("-i", "on")
        if during is None:
            time.sleep(seconds)
        else:
            during.wait(seconds + 60)
        self._control("-i", "off")
        self._control("-d")
        time.sleep(1)
        new = [p for p in self.out.parent.glob(self.out.name + ".*") if p not in self._read]
        self._read.update(new)
        return _totals(new)


def _wrk(url: str, body: Path, concurrency: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
                             "-s", str(BENCH / "wrk_post.lua"), url + "/v1/chat/completions", "--", str(body)],
                            stdout=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", metavar="VARIANT")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--concurrency", type=int, default=1)
    args = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench.instructions needs {tool} (apt-get install valgrind wrk)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    stack = Stack(work, log=log)
    rows = []
    try:
        stack.start_consul()
        stack.start_worker("worker", "--models", "echo", "--svc-name", "echo")
        body = work / "chat.json"
        body.write_bytes(chat_body("echo", SHORT_TEXT))
        for i, variant in enumerate(args.variants):
            checkout, _, config = variant.rpartition("|")
            wrapper = Counted(stack, f"wrapper-{i}", Path(checkout) if checkout else ROOT, config or "-",
                              work / f"callgrind-{i}")
            wrapper.wait_routable("echo")
            _wrk(wrapper.url, body, args.concurrency, 3).communicate(timeout=120)  # warm-up
            idle = wrapper.counted(None, args.seconds)
            load = _wrk(wrapper.url, body, args.concurrency, args.seconds)
            loaded = wrapper.counted(load, args.seconds)
            out = load.communicate(timeout=60)[0]
            found = re.search(r"(\d+) requests in", out)
            requests = int(found.group(1)) if found else 0
            per_request = (loaded - idle) / requests if requests else float("nan")
            rows.append((variant, requests, per_request))
            log(f"{variant}: {requests} requests, {per_request:,.0f} instructions per request "
                f"(idle {idle / args.seconds:,.0f} per second)")
            wrapper.proc.stop()
    finally:
        stack.procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| variant | requests | instructions per request |\n|---|---:|---:|")
    for variant, requests, per_request in rows:
        print(f"| {variant} | {requests} | {per_request:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
