"""#13: what a registration storm leaves in the wrapper's memory, in process (docs/performance.md,
"#13 memory: allocation order").

    python -m bench.registry_memory [--instances 10000] [--step 250] [--services 1000] [--consul [--wrapper]]

A real Discovery and RoutingTable, with their three real watches, are fed Consul's answers for a storm like
bench.run's scale phase: the catalog grows by STEP instances per answer up to INSTANCES of one model on one
node (every answer: the services list, the whole checks answer, the node's services read for the new
instances' addresses); then everything is deregistered and INSTANCES come back spread over SERVICES services
(each new service is read whole by the services watch first). Answers are Consul 1.8's JSON shapes, as bytes
written to files beforehand (the measurement runs in a child process) and read when asked for, so that making
them leaves nothing in the measured heap.

With --consul, a Consul dev agent instead, registered to as bench.run does (a transaction of 32 fakes at a
time, as fast as Consul takes them), the watches' answers and pacing Consul's own; with --wrapper as well,
the whole wrapper in its own process (uvloop, its request path idle), only its VmRSS, before and after
bench.run's three probes. Everything started is stopped at the end.

Prints, per row (as bench.run's rows: the empty catalog, then each layout at its size), VmRSS, pymalloc's
arenas (1 MiB each; one live block keeps one mapped) and the bytes in their live blocks, and, from a second
run under tracemalloc, the live total discovery and the table hold. RSS far above the live total is heap
pages the storm left each holding a few objects.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

NODE = "bench-fake-node"  # bench/stack.py FAKE_NODE; bench.stack is imported only where needed (it would
# count in the in-process memory figures)
AGENT = "agent-node"
TAGS = ["openai-api-wrapper", "model=bench-model"]
PORT = 9000
CHECKS = "checks.json"
NODE_SERVICES = "node.json"
SERVICES = "services.json"
MIB = 1024 * 1024


# ---- the answers, written by a separate process --------------------------------------------------------------

Fake = tuple[str, str, list[str], int]  # (id, service, tags, create index)


def _check(node: str, service_id: str, service: str, tags: list[str], created: int) -> dict[str, Any]:
    return {"Node": node, "CheckID": f"check-{service_id}" if service_id else "serfHealth",
            "Name": "fake" if service_id else "Serf Health Status", "Status": "passing", "Notes": "",
            "Output": "" if service_id else "Agent alive and reachable", "ServiceID": service_id,
            "ServiceName": service, "ServiceTags": tags, "Type": "" if service_id else "serf",
            "Definition": {"Interval": "0s", "Timeout": "0s", "DeregisterCriticalServiceAfter": "0s", "HTTP": "",
                           "Header": None, "Method": "", "Body": "", "TLSSkipVerify": False, "TCP": ""},
            "CreateIndex": created, "ModifyIndex": created}


def _node() -> dict[str, Any]:
    return {"ID": "", "Node": NODE, "Address": "127.0.0.1", "Datacenter": "dc1",
            "TaggedAddresses": None, "Meta": None, "CreateIndex": 12, "ModifyIndex": 12}


def _service(sid: str, service: str, tags: list[str], created: int) -> dict[str, Any]:
    return {"ID": sid, "Service": service, "Tags": tags, "Address": "127.0.0.1", "Meta": None, "Port": PORT,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
            "Proxy": {"MeshGateway": {}, "Expose": {}}, "Connect": {}, "CreateIndex": created,
            "ModifyIndex": created}


def _dump(path: Path, body: object) -> None:
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))  # a dev agent pretty-prints


def write_step(folder: Path, fakes: list[Fake], new_services: set[str]) -> None:
    """Consul's answers once `fakes` are registered; the whole entries of `new_services` too."""
    folder.mkdir(parents=True)
    _dump(folder / CHECKS, [_check(AGENT, "", "", [], 5),
                            *(_check(NODE, sid, service, tags, created) for sid, service, tags, created in fakes)])
    _dump(folder / NODE_SERVICES, {"Node": _node(), "Services": [_service(*fake) for fake in fakes]})
    services: dict[str, list[str]] = {"consul": []}
    for _, service, tags, _ in fakes:
        services.setdefault(service, [])
        services[service] = sorted(set(services[service]) | set(tags))
    _dump(folder / SERVICES, services)
    for name in new_services:
        _dump(folder / f"health-{name}.json",
              [{"Node": _node(), "Service": _service(sid, service, tags, created),
                "Checks": [_check(NODE, sid, service, tags, created)]}
               for sid, service, tags, created in fakes if service == name])


def storm(instances: int, services: int) -> list[list[Fake]]:
    """The rows' catalogs: one model's instances, then (after all are deregistered) the same spread over
    `services` services, a model each; registered 32 a transaction as bench.run does (the create index)."""
    one = [(f"bench-fake-{i}", "bench-fake", TAGS, 1000 + i // 32) for i in range(instances)]
    per = max(1, instances // services)
    spread = [(f"bench-fake-s{s}-{i}", f"bench-fake-s{s}", ["openai-api-wrapper", f"model=spread-{s}"],
               5000 + (s * per + i) // 32) for s in range(services) for i in range(per)]
    return [one, spread]


def write_answers(root: Path, instances: int, step: int, services: int) -> list[str]:
    """One folder per answer; returns the labels of the rows' last answers."""
    n, rows = 0, []
    write_step(root / f"{n:04d}", [], set())  # the empty catalog: only the agent's node check
    rows.append(f"{n:04d}")
    for layout in storm(instances, services):
        known: set[str] = set()
        if n:
            n += 1
            write_step(root / f"{n:04d}", [], set())  # the last layout deregistered
        for size in range(step, len(layout) + step, step):
            n += 1
            now = layout[:size]
            names = {service for _, service, _, _ in now}
            write_step(root / f"{n:04d}", now, names - known)
            known |= names
        rows.append(f"{n:04d}")
    return rows


# ---- the measured process ------------------------------------------------------------------------------------

class StormConsul:
    """Answers the watches from the current answer's folder; a blocking query waits for the next answer."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.at = 0
        self.moved = asyncio.Event()
        self.blocked: dict[tuple[str, str], int] = {}  # watch -> the index it waits past

    @property
    def index(self) -> int:
        return 100 + self.at

    def advance(self) -> None:
        self.at += 1
        self.moved.set()
        self.moved = asyncio.Event()

    async def read(self, path: str, index: int | None = None, wait: str | None = None,
                   params: dict[str, str] | None = None) -> Any:
        from svc_mgr.consul_client import Answer
        from svc_mgr.discovery import FAILING_FILTER
        watch = (path, (params or {}).get("filter", ""))
        while index is not None and index >= self.index:
            self.blocked[watch] = index
            await self.moved.wait()
        self.blocked.pop(watch, None)
        return Answer(index=self.index, raw=self._body(path, watch[1] == FAILING_FILTER), filtered_by_acls=False)

    def _body(self, path: str, failing: bool) -> bytes:
        folder = self.folders[self.at]
        if path == "/v1/health/state/any":
            return b"[]" if failing else (folder / CHECKS).read_bytes()
        if path == "/v1/catalog/services":
            return (folder / SERVICES).read_bytes()
        if path.startswith("/v1/catalog/node-services/"):
            return (folder / NODE_SERVICES).read_bytes()
        name = path.rsplit("/", 1)[1]
        for earlier in reversed(self.folders[:self.at + 1]):  # a service's entries as first written
            if (earlier / f"health-{name}.json").exists():
                return (earlier / f"health-{name}.json").read_bytes()
        return b"[]"

    async def close(self) -> None:
        pass


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def pymalloc_stats() -> tuple[int, float]:
    """(arenas mapped, MiB in their live blocks), from sys._debugmallocstats (it writes to fd 2)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    arenas = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    live = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    if arenas is None or live is None:
        return 0, 0.0  # not pymalloc's allocator (tracemalloc's hooks, PYTHONMALLOC=malloc)
    return int(arenas.group(1).replace(",", "")), int(live.group(1).replace(",", "")) / MIB


async def _settled(consul: StormConsul) -> None:
    """Until all three watches wait past the current answer (each applied it)."""
    while len([i for i in consul.blocked.values() if i == consul.index]) < 3:
        await asyncio.sleep(0.005)


async def run(root: Path, rows: list[str], trace: bool) -> list[dict[str, Any]]:
    from common.settings import ConsulSettings, WrapperSettings
    from svc_mgr import RoutingTable
    from svc_mgr.discovery import Discovery, release_memory

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    consul = StormConsul(folders)
    table = RoutingTable()
    discovery = Discovery(ConsulSettings(), table, WrapperSettings())
    discovery.start = None  # type: ignore[assignment,method-assign]  # the watches are started here, on the fake
    discovery._consul = consul  # type: ignore[assignment]
    watches = [asyncio.create_task(discovery._watch(path, params, apply, read)) for path, params, apply, read in (
        ("/v1/health/state/any", {"filter": _filters()[0]}, discovery._apply, discovery._checks_read),
        ("/v1/catalog/services", {}, discovery._apply_services, discovery._services_read),
        ("/v1/health/state/any", {"filter": _filters()[1]}, discovery._apply_failing, asyncio.Event()))]
    results: list[dict[str, Any]] = []
    try:
        await _settled(consul)
        for folder in folders:
            if folder.name != folders[0].name:
                consul.advance()
                await _settled(consul)
            if folder.name in rows:
                gc.collect()
                release_memory()
                arenas, live = pymalloc_stats()
                row = {"row": folder.name, "instances": len(discovery.registered()), "rss_mib": vm_rss_mib(),
                       "arenas": arenas, "pymalloc_live_mib": live, "blocks": sys.getallocatedblocks()}
                if trace:
                    row["traced_mib"] = tracemalloc.get_traced_memory()[0] / MIB
                results.append(row)
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
    return results


def _filters() -> tuple[str, str]:
    from svc_mgr.discovery import CHECKS_FILTER, FAILING_FILTER
    return CHECKS_FILTER, FAILING_FILTER


def child(root: Path, rows: list[str], trace: bool) -> None:
    import common.settings  # noqa: F401  # what the wrapper imports anyway, before the baseline
    import svc_mgr.discovery  # noqa: F401
    if trace:
        tracemalloc.start()
    print(json.dumps(asyncio.run(run(root, rows, trace))))


# ---- with a real Consul dev agent ------------------------------------------------------------------------------

def register(addr: str, fakes: list[Fake]) -> None:
    """As bench.run registers its fakes (bench/stack.py)."""
    from .stack import register_fakes
    register_fakes(addr, [(sid, service, tags) for sid, service, tags, _ in fakes], PORT)


async def watch_real(addr: str, trace: bool) -> None:
    """The measured process: a Discovery on a real agent; a row on stdout each time stdin names a count of
    instances to wait for (settled: that many registered, and no answer applied for a second)."""
    from common.settings import ConsulSettings, WrapperSettings
    from svc_mgr import RoutingTable
    from svc_mgr.discovery import Discovery, release_memory
    host, port = addr.split(":")
    discovery = Discovery(ConsulSettings(host=host, port=int(port)), RoutingTable(), WrapperSettings())
    await discovery.start()
    await discovery.ready.wait()
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            wanted = int(line)
            while len(discovery.registered()) != wanted or time.monotonic() - (discovery.heard_at or 0) < 1:
                await asyncio.sleep(0.05)
            gc.collect()
            release_memory()
            arenas, live = pymalloc_stats()
            row = {"instances": wanted, "rss_mib": vm_rss_mib(), "arenas": arenas, "pymalloc_live_mib": live,
                   "blocks": sys.getallocatedblocks()}
            if trace:
                row["traced_mib"] = tracemalloc.get_traced_memory()[0] / MIB
            print(json.dumps(row), flush=True)
    finally:
        await discovery.stop()


def real_rows(instances: int, services: int, trace: bool) -> list[dict[str, Any]]:
    from tests.support.procs import Consul, Procs
    procs = Procs()
    try:
        consul = Consul(procs)
        register_node = {"Node": NODE, "Address": "127.0.0.1"}
        from .stack import consul_put
        consul_put(consul.addr, "/v1/catalog/register", register_node)
        cmd = [sys.executable, "-m", "bench.registry_memory", "--watch", consul.addr, *(["--trace"] if trace else [])]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parent.parent)
        assert child.stdin is not None and child.stdout is not None
        rows = []
        try:
            def row(count: int) -> None:
                child.stdin.write(f"{count}\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                rows.append(json.loads(child.stdout.readline()))  # type: ignore[union-attr]
            row(0)
            one, spread = storm(instances, services)
            register(consul.addr, one)
            row(len(one))
            consul_put(consul.addr, "/v1/catalog/deregister", {"Node": NODE})  # as bench.run between its rows
            consul_put(consul.addr, "/v1/catalog/register", register_node)
            register(consul.addr, spread)
            row(len(spread))
        finally:
            child.stdin.close()
            child.wait(timeout=30)
        return rows
    finally:
        procs.stop_all()


def _marked(fakes: list[Fake], marker: str) -> list[Fake]:
    """`fakes`, the last one also serving `marker` (as bench.run's: routable once the storm is read)."""
    sid, service, tags, created = fakes[-1]
    return [*fakes[:-1], (sid, service, [*tags, f"model={marker}"], created)]


def wrapper_rows(instances: int, services: int) -> list[dict[str, Any]]:
    """The whole wrapper (its own process, uvloop, its request path idle), VmRSS read from /proc: each row
    taken 3 s after the last fake became routable."""
    from tests.support.procs import Consul, Procs, get_json, wait_until
    from tests.support.servers import start_wrapper

    from .stack import consul_put, rss_mib
    procs = Procs()
    try:
        consul = Consul(procs)
        register_node = {"Node": NODE, "Address": "127.0.0.1"}
        consul_put(consul.addr, "/v1/catalog/register", register_node)
        wrapper = start_wrapper(procs, consul)
        rows = []

        def routable(model: str) -> None:
            wait_until(lambda: get_json(f"{wrapper.url}/v1/models/{model}")[0] == 200, 120, model)

        def row(count: int, marker: str | None, service: str = "bench-fake") -> None:
            if marker:
                routable(marker)
            time.sleep(3)
            rss = rss_mib(wrapper.proc.pid)
            if count:  # bench.run's probes: an instance with a new model, routed, then deregistered
                for k in range(3):
                    sid = f"probe-{marker}-{k}"
                    register(consul.addr, [(sid, service, [*TAGS, f"model={sid}"], 0)])
                    routable(sid)
                    consul_put(consul.addr, "/v1/catalog/deregister", {"Node": NODE, "ServiceID": sid})
                time.sleep(3)
            rows.append({"instances": count, "rss_mib": rss, "after_probes_mib": rss_mib(wrapper.proc.pid)})
        time.sleep(2)
        row(0, None)
        one, spread = storm(instances, services)
        register(consul.addr, _marked(one, "mark-one"))
        row(len(one), "mark-one")
        consul_put(consul.addr, "/v1/catalog/deregister", {"Node": NODE})
        consul_put(consul.addr, "/v1/catalog/register", register_node)
        register(consul.addr, _marked(spread, "mark-spread"))
        row(len(spread), "mark-spread", "bench-fake-s0")
        return rows
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=10_000)
    p.add_argument("--step", type=int, default=250, help="instances registered between two answers")
    p.add_argument("--services", type=int, default=1000, help="services of the second layout")
    p.add_argument("--consul", action="store_true",
                   help="a real Consul dev agent, registered to as bench.run does, instead of scripted answers")
    p.add_argument("--wrapper", action="store_true",
                   help="with --consul: the whole wrapper in its own process, only its VmRSS")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--watch", help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.rows.split(","), a.trace)
        return 0
    if a.watch:
        import svc_mgr.discovery  # noqa: F401  # imported before tracing starts, as in child()
        if a.trace:
            tracemalloc.start()
        asyncio.run(watch_real(a.watch, a.trace))
        return 0
    if a.consul and a.wrapper:
        for label, row in zip(("empty catalog", "one model", "over services"), wrapper_rows(a.instances, a.services),
                              strict=True):
            print(f"| {label} | {row['instances']:,} | {row['rss_mib']:.1f} | {row['after_probes_mib']:.1f} |")
        return 0
    if a.consul:
        runs = {trace: real_rows(a.instances, a.services, trace) for trace in (False, True)}
        print_rows(a, runs)
        return 0
    with tempfile.TemporaryDirectory(prefix="registry-memory-") as tmp:
        t0 = time.monotonic()
        rows = write_answers(Path(tmp), a.instances, a.step, a.services)
        print(f"answers written in {time.monotonic() - t0:.1f} s ({len(list(Path(tmp).iterdir()))} answers)",
              file=sys.stderr)
        runs: dict[bool, list[dict[str, Any]]] = {}
        for trace in (False, True):
            cmd = [sys.executable, "-m", "bench.registry_memory", "--child", tmp, "--rows", ",".join(rows)]
            out = subprocess.run(cmd + (["--trace"] if trace else []), check=True, capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parent.parent).stdout
            runs[trace] = json.loads(out.strip().splitlines()[-1])
    print_rows(a, runs)
    return 0


def print_rows(a: argparse.Namespace, runs: dict[bool, list[dict[str, Any]]]) -> None:
    labels = ["empty catalog", f"{a.instances:,} of one model", f"{a.instances:,} over {a.services:,} services"]
    print("| row | instances | VmRSS MiB | pymalloc arenas (MiB) | live in them MiB | allocated blocks "
          "| tracemalloc live MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, plain, traced in zip(labels, runs[False], runs[True], strict=True):
        print(f"| {label} | {plain['instances']:,} | {plain['rss_mib']:.1f} | {plain['arenas']} | "
              f"{plain['pymalloc_live_mib']:.1f} | {plain['blocks']:,} | {traced['traced_mib']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
