#!/usr/bin/env python3
"""What the status page's recorder and the trace context cost per request (issue #10, part 2):

    python3 -m bench.observe_cost [BASE_COMMIT] [--rounds N] [--seconds S]
    python3 -m bench.observe_cost --micro     # in process: the observer's own CPU per request

Starts one Consul dev agent and one EchoGen worker (current code), and two wrappers on the same worker:
"before", the wrapper of BASE_COMMIT (default: the branch's merge base with main, unpacked with
`git archive` into a temporary directory), and "after", this checkout's. Runs wrk (JSON chat, 16
connections by default) against each in turn, alternating for N rounds, and prints the wrapper's CPU microseconds
per request for each round and their medians: CPU per request is less sensitive than throughput to the
other load on a shared machine. Tracing export stays off (the default). Every process is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.stack import cpu_seconds
from tests.support.procs import ROOT, Consul, Procs, free_port, get_json, wait_until

MODEL = "echo-observe-cost"


def unpack(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_wrapper(procs: Procs, consul: Consul, tree: Path, name: str) -> tuple[str, int]:
    port = free_port()
    proc = procs.start(name, [sys.executable, str(tree / "main_openai_wrapper_v2.py"), "127.0.0.1", str(port)],
                env={"CONSUL_HTTP_ADDR": consul.addr, "PYTHONPATH": str(tree)})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: get_json(url + "/health")[0] == 200, 30, f"{name} wrapper")
    wait_until(lambda: MODEL in {m["id"] for m in get_json(url + "/v1/models")[1]["data"]}, 30, f"{name} routing")
    return url, proc.pid


def load(url: str, body: Path, seconds: int, connections: int) -> int:
    """Requests wrk completed in `seconds` (`connections` connections, one thread)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(ROOT / "bench" / "wrk_post.lua"),
                          url + "/v1/chat/completions", "--", str(body)], check=True, capture_output=True, text=True)
    result = json.loads(re.search(r"BENCH_JSON (\{.*\})", out.stdout).group(1))  # type: ignore[union-attr]
    if any(result.get("errors", {}).values()):
        raise SystemExit(f"wrk saw errors: {result['errors']}")
    return int(result["requests"])


def micro(n: int = 50_000, rounds: int = 5) -> None:
    """CPU per request of Observer.observed + admitted + attempt_headers around a trivial endpoint, in
    process, against the same endpoint bare: what the request path pays, without the network's noise."""
    import asyncio
    import time

    from starlette.requests import Request
    from starlette.responses import Response

    from svc_mgr import Instance, RoutingTable
    from wrapper.observe import Observer

    table = RoutingTable()
    instance = Instance(id="echo-1", service="echo", address="127.0.0.1", port=1, models=("m",))
    table.update({"echo": [instance]})
    observer = Observer(table)
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"x-request-id", b"abc")]

    async def bare(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    async def routed(request: Request) -> Response:
        observer.admitted(request, "m")
        observer.attempt_headers(instance)
        return await bare(request)

    async def cpu_per_request(endpoint) -> float:  # type: ignore[no-untyped-def]
        started = time.process_time()
        for _ in range(n):
            await endpoint(Request({"type": "http", "headers": headers, "method": "POST", "path": "/"}))
        return (time.process_time() - started) / n * 1e6

    async def run() -> None:
        observed = observer.observed(routed, "chat")
        added = []
        for _ in range(rounds):
            without, with_ = await cpu_per_request(bare), await cpu_per_request(observed)
            added.append(with_ - without)
            print(f"bare {without:.1f} µs, observed {with_:.1f} µs: +{with_ - without:.1f} µs CPU/request")
        print(f"median added: {statistics.median(added):.1f} µs CPU/request")

    asyncio.run(run())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default=None, help="the commit to compare with (default: merge base with main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--before-tree", type=Path, default=None, help="a source tree to run as 'before' instead")
    parser.add_argument("--micro", action="store_true", help="only the in-process measurement")
    args = parser.parse_args(argv)
    if args.micro:
        micro()
        return 0
    base = args.base or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="observe-cost-") as tmp:
            before_tree = args.before_tree or unpack(base, Path(tmp))
            body = Path(tmp) / "body.json"
            body.write_text(json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}))
            consul = Consul(procs)
            worker_port = free_port()
            procs.start("worker", [sys.executable, str(ROOT / "template_worker.py"), "127.0.0.1", str(worker_port),
                                   "generators.echo.EchoGen", "--models", MODEL], env={"CONSUL_HTTP_ADDR": consul.addr})
            started = {"before": start_wrapper(procs, consul, before_tree, "wrapper-before"),
                       "after": start_wrapper(procs, consul, ROOT, "wrapper-after")}
            urls = {name: url for name, (url, _) in started.items()}
            pids = {name: pid for name, (_, pid) in started.items()}
            for url in urls.values():
                load(url, body, 1, args.connections)  # warm up
            per_request: dict[str, list[float]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                for name in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                    cpu = cpu_seconds(pids[name])
                    requests = load(urls[name], body, args.seconds, args.connections)
                    per_request[name].append((cpu_seconds(pids[name]) - cpu) / requests * 1e6)
                    print(f"round {round_ + 1} {name:6}: {requests:6d} requests, "
                          f"{per_request[name][-1]:6.0f} µs CPU/request", flush=True)
            b, a = (statistics.median(per_request[n]) for n in ("before", "after"))
            print(f"median CPU/request: before ({base[:10]}) {b:.0f} µs, after {a:.0f} µs: {a / b - 1:+.1%}")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
