#!/usr/bin/env python3
"""The cost of metrics (issue #10), A/B in one run:

    python3 -m bench.metrics_ab [--pairs 12] [--duration 4] [--concurrency 16]

Starts Consul, one EchoGen worker and two wrappers of the same build, one with `metrics.enabled: true`
(the default) and one with `false`, then loads them in turn (on, off, on, off, ...) with the benchmark's
load generator and prints, per pair and as medians, the wrapper's req/s and its CPU microseconds per
request (process CPU time ÷ requests: much less sensitive than req/s to other load on a shared machine).
Every process it starts is stopped at the end."""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from .load import have_wrk, run_load
from .run import SHORT_TEXT, chat_body, check_chat, log
from .stack import Stack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    stack = Stack(work, log=log)
    tool = "wrk" if have_wrk() else "python"
    try:
        stack.start_consul()
        worker = stack.start_worker("worker", "--models", "echo", "--svc-name", "echo")
        off_config = work / "metrics-off.yaml"
        off_config.write_text("metrics:\n  enabled: false\n")
        wrappers = {"on": stack.start_wrapper("wrapper-metrics-on"),
                    "off": stack.start_wrapper("wrapper-metrics-off", "--config", str(off_config))}
        body = work / "chat.json"
        body.write_bytes(chat_body("echo", SHORT_TEXT))
        for w in wrappers.values():
            stack.wait_routable(w, "echo")
            check_chat(w.url + "/v1/chat/completions", body.read_bytes(), SHORT_TEXT)
            run_load(w.url + "/v1/chat/completions", str(body), args.concurrency, 2.0, tool=tool)  # warm-up
        rows: dict[str, list[dict]] = {"on": [], "off": []}
        for i in range(args.pairs):
            for name in (("on", "off") if i % 2 == 0 else ("off", "on")):  # who goes first alternates too
                w = wrappers[name]
                res = run_load(w.url + "/v1/chat/completions", str(body), args.concurrency, args.duration, tool=tool,
                               watch={"proxy": w.pid, "worker": worker.pid}, ours=stack.pids())
                cpu_us = res.cores["proxy"] / res.rps * 1e6 if res.rps else float("nan")
                rows[name].append({"rps": res.rps, "cpu_us": cpu_us, "errors": res.errors,
                                   "other_cores": res.other_cores})
                log(f"pair {i + 1:>2}/{args.pairs} metrics {name:<3} {res.rps:7.0f} req/s  wrapper CPU "
                    f"{cpu_us:6.1f} µs/request  (other load {res.other_cores:.2f} cores)")
        med = {n: {k: statistics.median(r[k] for r in rows[n]) for k in ("rps", "cpu_us", "other_cores")}
               for n in rows}
        cpu_ratio = statistics.median(a["cpu_us"] / b["cpu_us"] for a, b in zip(rows["on"], rows["off"], strict=True))
        rps_ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(rows["on"], rows["off"], strict=True))
        print(f"metrics on : {med['on']['rps']:7.0f} req/s, wrapper {med['on']['cpu_us']:6.1f} µs CPU/request")
        print(f"metrics off: {med['off']['rps']:7.0f} req/s, wrapper {med['off']['cpu_us']:6.1f} µs CPU/request")
        print(f"on ÷ off (median of the pairs' ratios): req/s {rps_ratio:.3f}, CPU per request {cpu_ratio:.3f}; "
              f"other load median {statistics.median(r['other_cores'] for n in rows for r in rows[n]):.2f} cores")
        if args.out:
            args.out.write_text(json.dumps({"rows": rows, "median": med, "rps_ratio": rps_ratio,
                                            "cpu_ratio": cpu_ratio, "tool": tool}, indent=1))
        return 0
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
