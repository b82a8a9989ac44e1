"""CPU per keyed request of /metrics' per-key counters (wrapper/key_metrics.py), in process:
`python -m bench.key_metrics_cost single|mp` (mp: prometheus-client's
multiprocess mode, as with --processes N). docs/performance.md has the figures."""
from __future__ import annotations

import sys
import tempfile
import time


def main(mode: str) -> None:
    if mode == "mp":  # before the first metric is made: it picks the value store
        from common.metrics import use_multiprocess_dir
        use_multiprocess_dir(tempfile.mkdtemp())
    from prometheus_client import CollectorRegistry

    from wrapper.counters import Settlement
    from wrapper.key_metrics import KeyMetrics

    metrics = KeyMetrics(CollectorRegistry(), {"m"}.__contains__)
    settlement = Settlement((), None, 30, 20, 10, False, "alice", "m", 0, True)
    for _ in range(1000):  # the label children bound, caches warm
        metrics.count(settlement)
    n = 200_000
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            metrics.count(settlement)
        print(mode, f"{(time.process_time() - start) / n * 1e6:.2f} µs CPU per keyed request")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "single")
