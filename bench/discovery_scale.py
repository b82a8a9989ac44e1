"""How fast a change in a large Consul catalog reaches the wrapper's routing table (docs/performance.md).

    python3 -m bench.discovery_scale [--services 2000] [--instances 5] [--changes 20]

Starts a Consul dev agent and a wrapper on free loopback ports (tests/support/), writes SERVICES ×
INSTANCES entries straight into the catalog (tests/support/consul_bulk.py: addresses that need not
answer), then times, from the Consul write to the wrapper's answer changing (polled every 2 ms):
a new service becoming routable, and its only instance's check turning critical. Prints a Markdown
table; everything it started is stopped at the end.
"""
from __future__ import annotations

import argparse
import statistics
import time
import urllib.error
import urllib.request
import uuid

from tests.support import consul_bulk
from tests.support.consul_bulk import Entry, connections_to
from tests.support.procs import Consul, Procs, get_json
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
        time.sleep(0.002)
    return 1000 * (time.monotonic() - start)


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    return (f"{statistics.median(ordered):.0f} | {ordered[int(0.9 * (len(ordered) - 1))]:.0f} | "
            f"{ordered[0]:.0f}–{ordered[-1]:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    procs = Procs()
    try:
        consul = Consul(procs, name="consul-bench")
        started = time.monotonic()
        consul_bulk.register(consul, consul_bulk.catalog(args.services, args.instances))
        registered = time.monotonic() - started
        started = time.monotonic()
        wrapper = start_wrapper(procs, consul)
        ready = time.monotonic() - started
        assert get_json(wrapper.url + "/health")[1]["models"] == args.services
        appear, leave = [], []
        for _ in range(args.changes):
            entry = Entry("scale-node-0", f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}", 0)
            url = f"{wrapper.base_url}/models/{entry.model}"
            start = time.monotonic()
            consul_bulk.register(consul, [entry])
            appear.append(ms_until(lambda url=url: model_status(url) == 200, start))
            time.sleep(0.3)
            start = time.monotonic()
            consul_bulk.set_status(consul, entry, "critical")
            leave.append(ms_until(lambda url=url: model_status(url) == 404, start))
            time.sleep(0.3)
        print(f"\n{args.services} services × {args.instances} instances "
              f"({args.services * args.instances} entries, registered in {registered:.1f} s); "
              f"wrapper up with the whole table {ready:.1f} s after start; "
              f"{connections_to(wrapper.proc.pid, consul.port)} connections to Consul\n")
        print("| change (write to Consul → wrapper's answer changes) | median ms | p90 ms | range ms |")
        print("|---|---|---|---|")
        print(f"| a new service becomes routable ({args.changes}×) | {summary(appear)} |")
        print(f"| its instance's check turns critical: it leaves ({args.changes}×) | {summary(leave)} |")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
