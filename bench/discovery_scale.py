"""How fast a change in a large Consul catalog reaches the wrapper's routing table (docs/performance.md).

    python3 -m bench.discovery_scale [--services 2000] [--instances 5] [--changes 20] [--server-agent]

Starts a Consul dev agent (or, with --server-agent, a one-server agent as in production: a dev agent
pretty-prints every JSON answer, doubling its size) and a wrapper on free loopback ports (tests/support/), writes SERVICES ×
INSTANCES entries straight into the catalog (tests/support/consul_bulk.py: addresses that need not
answer), then times, from the Consul write to the wrapper's answer changing (polled every 5 ms):
a new service becoming routable, and its only instance's check turning critical. Prints a Markdown
table; everything it started is stopped at the end.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import httpx

from tests.support import consul_bulk
from tests.support.consul_bulk import Entry, connections_to, register_ops
from tests.support.procs import Consul, Procs, consul_binary, free_port, get_json, wait_until
from tests.support.servers import start_wrapper


def model_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def ms_until(condition, start: float, timeout: float = 30) -> float:
    """Milliseconds from `start` until condition() holds."""
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the change did not reach the wrapper")
        time.sleep(0.005)
    return 1000 * (time.monotonic() - start)


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    return (f"{statistics.median(ordered):.0f} | {ordered[int(0.9 * (len(ordered) - 1))]:.0f} | "
            f"{ordered[0]:.0f}–{ordered[-1]:.0f}")


class ServerAgent(Consul):
    """A single-server agent with a data directory, not -dev: answers in compact JSON, as in production."""

    def start(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="consul-bench-")
        ports = (f'ports {{ http = {self.port}, dns = -1, grpc = -1, serf_lan = {free_port()}, '
                 f'serf_wan = {free_port()}, server = {free_port()} }}')
        self.proc = self.procs.start(self.name, [consul_binary(), "agent", "-server", "-bootstrap-expect", "1",
                                                 "-data-dir", self.data_dir,
                                                 "-bind", "127.0.0.1", "-client", "127.0.0.1", "-log-level", "warn",
                                                 "-hcl", ports])
        wait_until(self._leader, 60, "the Consul agent to elect itself leader")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--server-agent", action="store_true", help="a one-server agent instead of a dev agent")
    args = parser.parse_args()
    procs = Procs()
    consul: Consul | None = None
    try:
        consul = (ServerAgent if args.server_agent else Consul)(procs, name="consul-bench")
        started = time.monotonic()
        consul_bulk.register(consul, consul_bulk.catalog(args.services, args.instances))
        registered = time.monotonic() - started
        started = time.monotonic()
        wrapper = start_wrapper(procs, consul, "--log-level", "debug")  # for discovery's line per answer
        ready = time.monotonic() - started
        assert get_json(wrapper.url + "/health")[1]["models"] == args.services
        appear, leave = [], []
        with httpx.Client(base_url=f"http://{consul.addr}") as client:  # one keep-alive connection for the changes
            for _ in range(args.changes):
                entry = Entry("scale-node-0", f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}", 0)
                url = f"{wrapper.base_url}/models/{entry.model}"
                start = time.monotonic()
                client.put("/v1/txn", json=register_ops(entry, "passing")).raise_for_status()
                appear.append(ms_until(lambda url=url: model_status(url) == 200, start))
                time.sleep(0.3)
                start = time.monotonic()
                client.put("/v1/txn", json=register_ops(entry, "critical")[1:]).raise_for_status()
                leave.append(ms_until(lambda url=url: model_status(url) == 404, start))
                time.sleep(0.3)
        print(f"\n{'server' if args.server_agent else 'dev'} agent, {args.services} services × {args.instances} instances "
              f"({args.services * args.instances} entries, registered in {registered:.1f} s); "
              f"wrapper up with the whole table {ready:.1f} s after start; "
              f"{connections_to(wrapper.proc.pid, consul.port)} connections to Consul\n")
        applied = [float(m) for m in re.findall(r"health/state/any at index \d+: \d+ bytes after \d+ ms, applied in (\d+) ms",
                                                wrapper.proc.output())[-2 * args.changes:]]
        print("| change (write to Consul → wrapper's answer changes) | median ms | p90 ms | range ms |")
        print("|---|---|---|---|")
        print(f"| a new service becomes routable ({args.changes}×) | {summary(appear)} |")
        print(f"| its instance's check turns critical: it leaves ({args.changes}×) | {summary(leave)} |")
        print(f"| of which the wrapper's own work once Consul's answer arrived (its DEBUG lines) | {summary(applied)} |")
    finally:
        procs.stop_all()
        if isinstance(consul, ServerAgent):
            shutil.rmtree(consul.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
