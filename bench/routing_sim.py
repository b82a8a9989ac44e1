"""The routing table beyond this machine: fed up to 100,000 instances with churn, no processes (#13).

    python3 -m bench.routing_sim [--sizes 1000,10000,100000] [--seconds 3] [--png docs/routing-sim.png]

For each size N and two layouts — "spread" (10 instances per service, one model per service: a catalog of
many models) and "one model" (every instance serves one model: the worst case for a model's list) — it
builds a RoutingTable as discovery does (one `update` with every service), then applies churn: 1 % of
the instances change per simulated second (an instance's check fails or passes again, which discovery
turns into one `update` of its service's routable set), and measures:

- memory: what the table and its instances hold (tracemalloc, after a full collection), per instance;
- update cost: wall time of one `update` for one changed service (median over the churn);
- pick cost: wall time of one `pick` for a random model (median of batches);
- the full-answer cost: decoding a synthetic `/v1/health/state/any` answer of N checks into what discovery
  reads, and `seen_in` over it (what a registration or deregistration costs the wrapper; docs/performance.md).

Prints a Markdown table; with --png also draws the three costs against N (needs matplotlib).
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from svc_mgr.discovery import checks_in, seen_in
from svc_mgr.entry import MARKER_TAG, Instance
from svc_mgr.routing import RoutingTable

PER_SERVICE = 10


def catalog(size: int, layout: str) -> dict[str, list[Instance]]:
    services: dict[str, list[Instance]] = {}
    for i in range(size):
        service = f"svc-{i // PER_SERVICE}"
        model = "m" if layout == "one model" else service
        services.setdefault(service, []).append(
            Instance(id=f"{service}-{i % PER_SERVICE}", service=service, address=f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                     f"{i & 255}", port=9000 + i % PER_SERVICE, models=(model,)))
    return services


def table_memory(services: dict[str, list[Instance]]) -> tuple[RoutingTable, float]:
    """The table built from `services`, and the bytes it (with its instances) holds per instance."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fresh = {name: [Instance(id=i.id, service=i.service, address=i.address, port=i.port, models=i.models)
                    for i in instances] for name, instances in services.items()}
    table = RoutingTable()
    table.update(fresh)
    del fresh
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return table, held / sum(map(len, services.values()))


def churn(table: RoutingTable, services: dict[str, list[Instance]], seconds: float, rng: random.Random) -> list[float]:
    """1 % of the instances change per simulated second; returns each update's wall time in seconds."""
    size = sum(map(len, services.values()))
    names = list(services)
    down: dict[str, set[str]] = {}
    costs: list[float] = []
    for _ in range(max(1, int(size * 0.01 * seconds))):
        service = rng.choice(names)
        instance = rng.choice(services[service])
        failing = down.setdefault(service, set())
        failing ^= {instance.id}  # its check fails, or passes again
        routable = [i for i in services[service] if i.id not in failing]
        started = time.perf_counter()
        if routable:
            table.update({service: routable})
        else:
            table.update({}, [service])
        costs.append(time.perf_counter() - started)
    return costs


def pick_cost(table: RoutingTable, models: list[str], rng: random.Random, batches: int = 30, per: int = 2000) -> float:
    chosen = [rng.choice(models) for _ in range(per)]
    timings = []
    for _ in range(batches):
        started = time.perf_counter()
        for model in chosen:
            table.pick(model)
        timings.append((time.perf_counter() - started) / per)
    return statistics.median(timings)


def full_answer_cost(size: int, repeats: int = 5) -> float:
    checks = [{"Node": f"node-{i % 50}", "CheckID": f"service:svc-{i // PER_SERVICE}-{i % PER_SERVICE}",
               "Status": "passing", "ServiceID": f"svc-{i // PER_SERVICE}-{i % PER_SERVICE}",
               "ServiceName": f"svc-{i // PER_SERVICE}", "ServiceTags": [MARKER_TAG, f"model=svc-{i // PER_SERVICE}"],
               "CreateIndex": i, "ModifyIndex": i} for i in range(size)]
    raw = orjson.dumps(checks)  # decoded as discovery does (#13): only the fields it reads
    return min(_timed(lambda: seen_in(checks_in(raw))) for _ in range(repeats))


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(sizes: list[int], seconds: float) -> list[dict[str, Any]]:
    rng = random.Random(13)
    rows = []
    for layout in ("spread", "one model"):
        for size in sizes:
            services = catalog(size, layout)
            table, per_instance = table_memory(services)
            costs = churn(table, services, seconds, rng)
            rows.append({"layout": layout, "instances": size, "bytes_per_instance": per_instance,
                         "table_mib": per_instance * size / 2**20, "changes": len(costs),
                         "update_us_p50": 1e6 * statistics.median(costs),
                         "update_us_p99": 1e6 * sorted(costs)[int(0.99 * (len(costs) - 1))],
                         "pick_us": 1e6 * pick_cost(table, table.models(), rng),
                         "full_answer_ms": 1e3 * full_answer_cost(size) if layout == "spread" else None})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| layout | instances | table MiB (bytes/instance) | changes | update µs p50 / p99 | pick µs | "
             "seen_in over the full answer ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        full = f"{r['full_answer_ms']:.1f}" if r["full_answer_ms"] is not None else "—"
        lines.append(f"| {r['layout']} | {r['instances']:,} | {r['table_mib']:.1f} ({r['bytes_per_instance']:.0f}) | "
                     f"{r['changes']:,} | {r['update_us_p50']:.0f} / {r['update_us_p99']:.0f} | {r['pick_us']:.2f} | "
                     f"{full} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for layout, style in (("spread", "o-"), ("one model", "s--")):
        sel = [r for r in rows if r["layout"] == layout]
        n = [r["instances"] for r in sel]
        axes[0].loglog(n, [r["update_us_p50"] for r in sel], style, label=layout)
        axes[1].semilogx(n, [r["pick_us"] for r in sel], style, label=layout)
        axes[2].loglog(n, [r["table_mib"] for r in sel], style, label=layout)
    axes[0].set_title("update of one changed service, µs (p50)")
    axes[1].set_title("pick, µs")
    axes[1].set_ylim(bottom=0)
    axes[2].set_title("table memory, MiB")
    for ax in axes:
        ax.set_xlabel("instances")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--seconds", type=float, default=3.0, help="simulated seconds of churn at 1 %%/s")
    parser.add_argument("--png", help="also draw the costs into this PNG file (matplotlib)")
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.seconds)
    print(markdown(rows))
    if args.png:
        plot(rows, args.png)


if __name__ == "__main__":
    main()
