"""Draw bench/results/bench.png from results.json (run by bench/run.py with the bench venv's Python).

    python bench/plot.py RESULTS_JSON OUT_PNG
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ["direct", "nginx", "wrapper", "litellm", "wrapper-2proc", "wrapper-cluster", "starlette-min"]
COLORS = {"direct": "#4c72b0", "nginx": "#55a868", "wrapper": "#c44e52", "litellm": "#8172b2",
          "wrapper-2proc": "#e8a0a2", "wrapper-cluster": "#dd8452", "starlette-min": "#937860"}


def main(src: Path, dst: Path) -> None:
    r = json.loads(src.read_text())
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    js = r.get("json", {})
    paths = [p for p in ORDER if p in js]

    ax = axes[0][0]
    base = js.get("direct", {}).get("16", {}).get("rps")
    vals = [js[p].get("16", {}).get("rps", 0) for p in paths]
    bars = ax.bar(paths, vals, color=[COLORS[p] for p in paths])
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(f"{v:,.0f}" + (f"\n{v / base:.2f}×" if base else ""), (b.get_x() + b.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    ax.margins(y=0.15)
    ax.set_title("JSON chat, concurrency 16: requests/s (× direct)")
    ax.set_ylabel("requests/s")

    ax = axes[0][1]
    p50 = [js[p].get("1", {}).get("p50_ms", 0) for p in paths]
    p99 = [js[p].get("1", {}).get("p99_ms", 0) for p in paths]
    xs = range(len(paths))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color=[COLORS[p] for p in paths])
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99", color=[COLORS[p] for p in paths], alpha=0.45)
    ax.set_xticks(list(xs), paths)
    ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    ax.set_yscale("log")
    ax.set_title("JSON chat, concurrency 1: latency (ms, log scale; dark p50, light p99)")
    ax.set_ylabel("ms")

    ax = axes[1][0]
    st = (r.get("stream") or {}).get("c1") or {}
    spaths = [p for p in ORDER if p in st]
    if spaths:
        ttfc = [st[p]["ttfc_p50_ms"] for p in spaths]
        rate = [st[p]["chunk_rate_p50"] for p in spaths]
        xs = range(len(spaths))
        ax.bar(list(xs), ttfc, color=[COLORS[p] for p in spaths])
        ax.set_xticks(list(xs), spaths)
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        ax.set_ylabel("time to first chunk p50 (ms)")
        ax2 = ax.twinx()
        ax2.plot(list(xs), rate, "ko-", label="chunks/s per stream")
        ax2.set_ylabel("chunks/s per stream (dots)")
        ax2.set_ylim(bottom=0)
        ax.set_title("Streaming 100 chunks, one at a time")

    ax = axes[1][1]
    sc = r.get("scale") or []
    if sc:
        n = [x["instances"] for x in sc]
        ax.plot(n, [x["p50_c1_ms"] for x in sc], "o-", label="wrapper chat p50, c=1 (ms)")
        ax.plot(n, [x["models_p50_ms"] for x in sc], "s-", label="/v1/models p50 (ms)")
        ax.set_xscale("log")
        ax.set_xlabel("registered instances of the model")
        ax.set_ylabel("ms")
        ax2 = ax.twinx()
        rt = [sorted(x["routable_ms"])[len(x["routable_ms"]) // 2] if x.get("routable_ms") else float("nan") for x in sc]
        ax2.plot(n, rt, "r^--", label="registration → routable p50 (ms, right)")
        ax2.set_ylabel("registration → routable (ms)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
        ax.set_title("Scale: routing cost, /v1/models, registration delay")

    meta = r.get("meta", {})
    mach = meta.get("machine", {})
    fig.suptitle(f"openai-api-wrapper benchmark ({meta.get('mode')} run, {meta.get('started', '')[:16]}; "
                 f"{mach.get('nproc')} cores, {mach.get('cpu', '')[:40]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
