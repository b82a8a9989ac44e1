#!/usr/bin/env python3
"""CPU per request of the wrapper's metric bookkeeping alone, in-process (issue #10):

    python3 -m bench.metrics_cost [N]

Runs what `Wrapper._observed` adds to a JSON request (begin, admit, one ok attempt, Server-Timing,
finish with the answer's usage) N times and prints CPU microseconds per request. A shared machine slows
wall-clock throughput figures; process CPU time per request is much less sensitive to it."""
from __future__ import annotations

import sys
import time

from starlette.responses import Response

from common import wire
from svc_mgr import Instance, RoutingTable
from wrapper.metrics import SERVER_TIMING, WrapperMetrics

MODEL = "echo"


def per_request_us(n: int) -> float:
    table = RoutingTable()
    table.set_service("echo", [Instance("echo-a", "echo", "127.0.0.1", 9001, (MODEL,))])
    inst = table.instances(MODEL)[0]
    metrics = WrapperMetrics(table, lambda: None, lambda: False)
    choices = [wire.chat_choice(0, wire.chat_message("Hello from the benchmark, please echo these words.", None), "stop")]
    body = wire.dumps(wire.chat_completion("chatcmpl-1", 1, MODEL, choices, wire.usage(12, 11)))
    start = time.process_time()
    for _ in range(n):
        obs = metrics.begin(wire.Capability.CHAT)
        obs.admit(MODEL, False)
        metrics.attempted(MODEL, inst, "ok")
        timing = metrics.answered(obs)
        response = Response(body, media_type="application/json", headers={})
        if timing is not None:
            response.raw_headers.append((SERVER_TIMING, timing))
        metrics.responded(obs, response)
    return (time.process_time() - start) / n * 1e6


def baseline_us(n: int) -> float:
    """The Response alone, which the request builds with or without metrics."""
    body = b"{}"
    start = time.process_time()
    for _ in range(n):
        Response(body, media_type="application/json", headers={})
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = [per_request_us(n) - baseline_us(n) for _ in range(3)]
    print(f"metrics bookkeeping per JSON request: {sorted(rounds)[1]:.2f} µs CPU (median of 3 rounds of {n:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
