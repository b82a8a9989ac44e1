"""bench/candidates.py and bench/bare_relay.py (issue #13's bench rows), the parts that are plain logic: the
comparison table's figures, their medians over runs, the packages the install step takes from
requirements-bench.txt, and how the bare relay finds its worker."""
from __future__ import annotations

from bench import candidates
from bench.bare_relay import target
from tests.support.procs import ROOT


def run_results(wrapper_rps: float, cpu_cores: float, ttfc_ms: float) -> dict:
    def row(rps: float, p50: float, cores: float | None = None) -> dict:
        return {"rps": rps, "p50_ms": p50, "cores": {"proxy": cores} if cores is not None else {"worker": 1.0}}
    return {"json": {"direct": {"1": row(5000, 0.2), "16": row(10000, 1.0)},
                     "wrapper": {"1": row(1500, 0.6), "16": row(4000, 3.0, 0.8)},
                     "bare-uvicorn-aiohttp": {"1": row(2500, 0.45), "16": row(wrapper_rps, 2.0, cpu_cores)}},
            "stream": {"c1": {"direct": {"ttfc_p50_ms": 0.4, "chunk_rate_p50": 40000},
                              "bare-uvicorn-aiohttp": {"ttfc_p50_ms": ttfc_ms, "chunk_rate_p50": 30000}}}}


def test_the_figures_are_ratios_and_differences_to_direct_and_cpu_per_request():
    labels = {"wrapper": "W", "bare-uvicorn-aiohttp": "B"}
    figures = candidates.figures(run_results(5000, 0.6, 0.65), labels)
    assert list(figures) == ["W", "B"]
    bare = figures["B"]
    assert bare["ratio"] == 0.5
    assert abs(bare["added_p50"] - 0.25) < 1e-9
    assert abs(bare["added_ttfc"] - 0.25) < 1e-9
    assert bare["chunk_rate"] == 0.75
    assert abs(bare["cpu_us"] - 120.0) < 1e-9  # 0.6 cores / 5,000 req/s
    assert figures["W"]["added_ttfc"] is None  # not streamed in this result: shown as –, not invented
    assert "| B | 0.50 | +0.250 | +0.250 | 0.75 | 120 |" in candidates.markdown(run_results(5000, 0.6, 0.65), labels)


def test_the_docs_table_takes_each_figure_s_median_over_runs_and_lists_each_run_s_cpu():
    runs = [run_results(5000, 0.6, 0.65), run_results(4000, 0.6, 0.45), run_results(6000, 0.6, 0.55)]
    table = candidates.median_table(runs, {"wrapper": "W", "bare-uvicorn-aiohttp": "B"})
    assert "| B | 0.50 | +0.250 | +0.150 | 0.75 | 120 (120, 150, 100) |" in table


def test_the_install_step_takes_the_pinned_candidates_from_requirements_bench():
    pins = candidates.pins(ROOT / "requirements-bench.txt")
    assert sorted(p.split("==")[0] for p in pins) == ["granian", "pyreqwest"]
    assert all("==" in p for p in pins)  # pinned, as the measurements were made with those versions
    assert not any(p.split("==")[0] in (ROOT / "requirements.txt").read_text() for p in pins)  # never the product's


def test_the_bare_relay_routes_by_the_bodys_model_and_tells_a_stream():
    routes = {"echo": "http://127.0.0.1:1"}
    assert target(routes, b'{"model": "echo", "messages": []}') == ("http://127.0.0.1:1", False)
    assert target(routes, b'{"model": "echo", "stream": true}') == ("http://127.0.0.1:1", True)
    assert target(routes, b'{"model": "other"}') == (None, False)
    assert target(routes, b"{not json") == (None, False)
    assert target(routes, b"[1, 2]") == (None, False)
