"""The affinity section of the benchmark (`python -m bench.affinity`, #14) runs end to end, small: it
finishes, stops what it started, and writes its table with a row per workload and balancer. No timed
or target assertions (the machine is shared); docs/performance.md holds the full run's figures."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.support.procs import ROOT


def test_bench_affinity_small_run_writes_its_table(tmp_path):
    argv = [sys.executable, "-m", "bench.affinity", "--workers", "2", "--conversations", "4", "--turns", "2",
            "--prefill-ms", "1", "--scale", "4", "--out", str(tmp_path)]
    bench = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = bench.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        bench.send_signal(signal.SIGTERM)
        stdout, stderr = bench.communicate(timeout=60)
        raise AssertionError(f"bench.affinity did not finish in 300 s\n{stderr[-6000:]}") from None
    assert bench.returncode == 0, f"bench.affinity failed\n{stderr[-6000:]}"
    section = json.loads((tmp_path / "affinity.json").read_text())
    assert [(r["workload"], r["balancer"]) for r in section["rows"]][:3] == [
        ("own system prompts", b) for b in ("random", "least_in_flight", "affinity")]
    assert len(section["rows"]) == 9
    assert all(r["requests"] == 8 and r["errors"] == 0 and 0 <= r["hit_rate"] <= 1 for r in section["rows"])
    # with `affinity`, each conversation's second turn found the key its first turn left (no new key)
    assert [r["picks"]["placed"] + r["picks"]["kept"] + r["picks"]["moved"] for r in section["rows"]
            if r["balancer"] == "affinity"] == [8, 8, 8]
    assert all(r["picks"]["placed"] == 4 for r in section["rows"] if r["balancer"] == "affinity")
    assert (tmp_path / "affinity.md").read_text().strip() in stdout
