"""The benchmark harness (`python -m bench.run`) runs end to end: a tiny --quick run against the worker directly
and through the wrapper, with its own Consul agent and processes on free ports. No timed assertions:
it checks that the run finishes, stops what it started, and writes a results table with numbers."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT


def test_bench_quick_run_writes_a_table_with_numbers(tmp_path):
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--no-install", "--no-nginx", "--no-litellm",
            "--no-profile", "--no-variants", "--memory-requests", "300", "--scale", "1,10", "--out", str(out)]
    harness = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = harness.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        harness.send_signal(signal.SIGTERM)  # the harness stops everything it started, then exits
        stdout, stderr = harness.communicate(timeout=60)
        raise AssertionError(f"bench.run --quick did not finish in 600 s\n{stderr[-6000:]}") from None
    assert harness.returncode == 0, f"bench.run failed\n{stderr[-6000:]}\n{stdout[-3000:]}"

    table = (out / "results.md").read_text()
    assert table.strip() in stdout  # the table is printed too
    assert "## JSON chat completions" in table and "## Targets (issue #5)" in table
    json_table = table.split("## JSON chat completions", 1)[1].split("\n#", 1)[0]
    for label in ("direct → worker (EchoGen)", "wrapper → worker"):
        rows = [line for line in json_table.splitlines() if line.startswith(f"| {label} |")]
        assert len(rows) >= 2, f"no c=1 and c=16 rows for {label}:\n{table}"
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            req_s = float(cells[2].replace(",", ""))
            p50 = float(cells[3])
            assert req_s > 0 and p50 > 0, row
    assert re.search(r"\| wrapper RSS growth .* \| [+-]\d+\.\d %", table), table

    results = json.loads((out / "results.json").read_text())
    for path in ("direct", "wrapper"):
        for c in ("1", "16"):
            run = results["json"][path][c]
            assert run["requests"] > 0 and run["rps"] > 0 and run["p50_ms"] > 0
    assert results["stream"]["c1"]["wrapper"]["chunks_per_stream"] >= 100  # 100 words (+ the finish chunk)
    assert [row["instances"] for row in results["scale"]] == [1, 10]
    assert results["memory"]["requests"] >= 300
    assert not any(n.startswith("run did not finish") for n in results["notes"]), results["notes"]
    started = results["meta"]["pids"]
    assert len(started) >= 4  # Consul, two workers, the wrapper, the minimal app
    assert not [pid for pid in started if (Path("/proc") / str(pid)).exists()], "processes left running"
