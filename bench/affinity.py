#!/usr/bin/env python3
"""The affinity section of the benchmark (#14): what prefix-affinity routing buys on engines with a prefix
cache, and what the pick costs.

    python3 -m bench.affinity            # this section alone (≈ 1 min), prints its Markdown table
    python3 -m bench.run --affinity      # as part of the whole benchmark

Four EchoGen workers simulate engines with a prefix cache (--prefix-cache, --prefill-ms-per-kchar: a
prompt's uncached part costs time). Many multi-turn conversations, each growing turn by turn, run at a
fixed concurrency through three wrappers in the same run: `random`, `least_in_flight` and `affinity`, in
three workloads: every conversation with its own system prompt, half of them sharing one long system
prompt, and all of them sharing it. Reported
per balancer: the cache hit rate (cached prompt characters / prompt characters, over all workers), p50/p99
latency, the busiest instance's share of requests against the mean, errors, and the wrapper's CPU per
request; then the pick alone, in process, with 4 and 1000 instances (the scale rows).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import timeit
import uuid
from pathlib import Path

from .stack import BENCH, Stack, cpu_seconds

BALANCERS = ("random", "least_in_flight", "affinity")
# --one-bound: also `affinity` with the single bound it had before (a key placed and kept within
# ceil(1.25 x share), no slack), in the same run, for a before/after comparison
ONE_BOUND = "affinity, one bound"
CONFIGS = {ONE_BOUND: "wrapper:\n  balancer: affinity\n  affinity: {place_epsilon: 0.25, keep_slack: 0}\n"}
# the share of conversations that open with the one long system prompt
WORKLOADS = (("own system prompts", 0.0), ("half share a system prompt", 0.5), ("all share one system prompt", 1.0))
SECRET = "bench-affinity-secret"
MODEL = "echo-cache"


def _options(args: argparse.Namespace) -> list[str]:
    return ["--prefix-cache", str(args.cache), "--prefill-ms-per-kchar", str(args.prefill_ms)]


def start(stack: Stack, args: argparse.Namespace) -> tuple[list, dict]:
    """Four caching workers and one wrapper per balancer (all with the worker secret, to read the counters)."""
    from tests.support.procs import free_port, get_json, python_script, wait_until

    env = {**stack.consul_env, "WORKER_SECRET": SECRET}
    workers = []
    for i in range(args.workers):
        port = free_port()
        proc = stack.procs.start(f"cache-worker-{i}", python_script(
            "template_worker.py", "127.0.0.1", str(port), "generators.echo.EchoGen", "--models", MODEL,
            "--svc-name", MODEL, *_options(args)), env=env)
        assert stack.consul is not None
        wait_until(lambda p=port: f"-127.0.0.1-{p}" in " ".join(stack.consul.services()), 30, f"worker {port}\n{proc.output()}")
        workers.append((proc, f"http://127.0.0.1:{port}"))
    wrappers = {}
    for balancer in balancers(args):
        config = stack.workdir / f"affinity-{balancer.replace(' ', '').replace(',', '-')}.yaml"
        config.write_text(CONFIGS.get(balancer, f"wrapper:\n  balancer: {balancer}\n"))
        port = free_port()
        proc = stack.procs.start(f"wrapper-{balancer.replace(' ', '')}", python_script(
            "main_openai_wrapper_v2.py", "127.0.0.1", str(port), "--config", str(config), "--log-level", "warning"),
            env=env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda u=url: get_json(f"{u}/v1/models/{MODEL}")[0] == 200, 30, f"wrapper {balancer}\n{proc.output()}")
        wrappers[balancer] = (proc, url)
    return workers, wrappers


def balancers(args: argparse.Namespace) -> tuple[str, ...]:
    return (*BALANCERS, ONE_BOUND) if args.one_bound else BALANCERS


def worker_counters(workers: list) -> list[dict]:
    from tests.support.procs import get_json

    out = []
    for _, url in workers:
        health = get_json(url + "/health", {"X-Worker-Secret": SECRET})[1]
        out.append({"served": health["served"], **health["generator"]["prefix_cache"]})
    return out


def affinity_picks(url: str) -> dict[str, int]:
    """The wrapper's affinity picks by outcome (kept, placed, moved) from its /metrics; {} for other balancers."""
    import urllib.request

    picks = {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("oaw_affinity_picks_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                picks[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return picks


def conversations(n: int, shared_share: float, args: argparse.Namespace, tag: str) -> list[list[dict]]:
    rng = random.Random(tag)
    shared = f"[{tag}] You are a careful assistant. " + "Follow the house style guide. " * (args.system_chars // 30)
    convs = []
    for c in range(n):
        system = shared if c < n * shared_share else f"[{tag}-{c}] You help with topic {c}. " * 8
        convs.append([{"role": "system", "content": system}, {"role": "user", "content": _words(rng, args.turn_chars)}])
    return convs


def _words(rng: random.Random, chars: int) -> str:
    text = []
    while sum(map(len, text)) < chars:
        text.append(rng.choice(("alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma")) + f"{rng.randrange(999)} ")
    return "".join(text)


async def drive(url: str, convs: list[list[dict]], turns: int, concurrency: int, turn_chars: int) -> dict:
    """Every conversation's turns in order, `concurrency` requests at a time across conversations."""
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(convs)):
        queue.put_nowait((i, 0))
    latencies: list[float] = []
    errors = 0
    rng = random.Random(url)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            i, turn = queue.get_nowait()
            messages = convs[i]
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": messages}) as r:
                    body = await r.json(content_type=None)
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            if not ok:
                errors += 1
                continue
            messages += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                         {"role": "user", "content": _words(rng, turn_chars)}]
            if turn + 1 < turns:
                queue.put_nowait((i, turn + 1))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def run_workloads(workers: list, wrappers: dict, args: argparse.Namespace) -> list[dict]:
    rows = []
    for workload, shared in WORKLOADS:
        for balancer in balancers(args):  # same run, one after the other, fresh conversations each
            proc, url = wrappers[balancer]
            convs = conversations(args.conversations, shared, args, uuid.uuid4().hex[:8])
            before, cpu0, picks0 = worker_counters(workers), cpu_seconds(proc.pid), affinity_picks(url)
            result = asyncio.run(drive(url, convs, args.turns, args.concurrency, args.turn_chars))
            cpu = cpu_seconds(proc.pid) - cpu0
            after, picks = worker_counters(workers), {k: v - picks0.get(k, 0) for k, v in affinity_picks(url).items()}
            delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
            served = [d["served"] for d in delta]
            rows.append({
                "workload": workload, "balancer": balancer, **result,
                "hit_rate": sum(d["cached_chars"] for d in delta) / max(1, sum(d["prompt_chars"] for d in delta)),
                "busiest_vs_mean": max(served) / max(1e-9, statistics.mean(served)),
                "wrapper_cpu_us_per_request": 1e6 * cpu / max(1, result["requests"]),
                # affinity only: requests whose key was remembered (kept or moved) vs new keys (placed)
                "picks": picks,
            })
            print(f"[affinity] {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def pick_cost(instances: int, picks: int = 20000) -> dict:
    """Microseconds per pick, in process: `random` vs `affinity` (key digest of a chat body included)."""
    from svc_mgr import Instance, RoutingTable
    from svc_mgr.affinity import Affinity
    from svc_mgr.routing import pick_random
    from wrapper.affinity_key import affinity_key

    insts = [Instance(id=f"s-{i}", service="s", address="127.0.0.1", port=1000 + i, models=("m",))
             for i in range(instances)]
    plain, keyed = RoutingTable(pick_random), RoutingTable(pick_random, affinity=Affinity())
    plain.set_service("s", insts)
    keyed.set_service("s", [Instance(id=i.id, service="s", address=i.address, port=i.port, models=("m",)) for i in insts])
    bodies = [{"model": "m", "messages": [{"role": "system", "content": "S" * 2000},
                                          {"role": "user", "content": f"conversation {c}"}]} for c in range(1000)]
    keyed.pick("m", key=affinity_key(None, bodies[0], 2048))  # build the ring outside the clock
    n = iter(range(10**9))
    t_random = timeit.timeit(lambda: plain.pick("m"), number=picks) / picks
    t_key = timeit.timeit(lambda: affinity_key(None, bodies[next(n) % 1000], 2048), number=picks) / picks
    keys = [affinity_key(None, b, 2048) for b in bodies]
    t_pick = timeit.timeit(lambda: keyed.pick("m", key=keys[next(n) % 1000]), number=picks) / picks
    return {"instances": instances, "random_us": 1e6 * t_random, "affinity_pick_us": 1e6 * t_pick,
            "affinity_key_us": 1e6 * t_key}


def markdown(section: dict) -> str:
    lines = ["## Affinity routing (#14)", "",
             f"{section['setup']}", "",
             "| workload | balancer | requests | errors | cache hit rate | p50 ms | p99 ms | busiest / mean | "
             "wrapper CPU µs/request | keys new / kept / moved |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        picks = r.get("picks") or {}
        moves = f"{picks.get('placed', 0)} / {picks.get('kept', 0)} / {picks.get('moved', 0)}" if picks else "–"
        lines.append(f"| {r['workload']} | {r['balancer']} | {r['requests']} | {r['errors']} | {r['hit_rate']:.0%} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['busiest_vs_mean']:.2f} | "
                     f"{r['wrapper_cpu_us_per_request']:.0f} | {moves} |")
    lines += ["", "The pick alone, in process (µs per request):", "",
              "| instances | random pick | affinity pick | affinity key (digest of a chat's opening) |", "|---|---|---|---|"]
    for r in section["pick"]:
        lines.append(f"| {r['instances']} | {r['random_us']:.2f} | {r['affinity_pick_us']:.2f} | {r['affinity_key_us']:.2f} |")
    return "\n".join(lines) + "\n"


def run_section(stack: Stack, args: argparse.Namespace) -> dict:
    workers, wrappers = start(stack, args)
    rows = run_workloads(workers, wrappers, args)
    setup = (f"{args.workers} EchoGen workers with --prefix-cache {args.cache} --prefill-ms-per-kchar {args.prefill_ms}; "
             f"{args.conversations} conversations x {args.turns} turns at concurrency {args.concurrency}; system prompt "
             f"{args.system_chars} chars, {args.turn_chars} chars per user turn (and as much again in each answer).")
    return {"setup": setup, "rows": rows, "pick": [pick_cost(n) for n in args.scale]}


def defaults() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--conversations", type=int, default=48)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache", type=int, default=32, help="sequences each worker's prefix cache holds")
    p.add_argument("--prefill-ms", type=float, default=50.0, help="ms per 1000 uncached prompt characters")
    p.add_argument("--system-chars", type=int, default=2000)
    p.add_argument("--turn-chars", type=int, default=400)
    p.add_argument("--one-bound", action="store_true",
                   help=f"also run `{ONE_BOUND}`: the affinity balancer with its former single load bound")
    p.add_argument("--scale", type=lambda text: [int(n) for n in text.split(",")], default=[4, 1000],
                   help="instance counts of the in-process pick measurement (default 4,1000)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.affinity", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--out", type=Path, default=BENCH / "results", help="writes affinity.json and affinity.md there")
    args = p.parse_args(argv)
    import signal
    import tempfile

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")  # so that `finally` stops every process started

    signal.signal(signal.SIGTERM, on_term)
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-affinity-")))
    try:
        stack.start_consul()
        section = run_section(stack, args)
    finally:
        stack.stop_all()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "affinity.json").write_text(json.dumps(section, indent=1))
    md = markdown(section)
    (args.out / "affinity.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
