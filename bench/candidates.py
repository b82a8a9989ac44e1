"""Issue #13's server and client candidates as bench rows (`python -m bench.run --candidates`).

Each row is one process relaying to the same EchoGen worker as the `wrapper` row, loaded in turn with the
others by the JSON and streaming phases:
- the wrapper (every default feature on) on granian instead of uvicorn, with pyreqwest instead of aiohttp
  (for every answer, or for JSON only), and both (bench/candidate_wrapper.py);
- bare relays, no features (bench/bare_relay.py): today's libraries (uvicorn + aiohttp), each library
  swapped alone, and granian's own interface (RSGI) with pyreqwest.
The packages come from requirements-bench.txt, installed into the project's environment (the rows import
the wrapper's code), see `install`.
"""
from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, get_json, wait_until

from .stack import Service, Stack

PACKAGES = ("granian", "pyreqwest")  # pinned in requirements-bench.txt


@dataclass(frozen=True)
class Candidate:
    name: str
    label: str
    module: str  # bench.candidate_wrapper or bench.bare_relay
    args: tuple[str, ...]
    consul: bool  # the wrapper rows read Consul; the bare relays have a fixed route to the worker


CANDIDATES = (
    Candidate("wrapper-granian", "wrapper on granian (ASGI) + aiohttp → worker", "bench.candidate_wrapper",
              ("--server", "granian", "--client", "aiohttp"), True),
    Candidate("wrapper-pyreqwest", "wrapper on uvicorn + pyreqwest → worker", "bench.candidate_wrapper",
              ("--server", "uvicorn", "--client", "pyreqwest"), True),
    Candidate("wrapper-pyreqwest-json", "wrapper on uvicorn + pyreqwest for JSON, aiohttp for streams → worker",
              "bench.candidate_wrapper", ("--server", "uvicorn", "--client", "pyreqwest-json"), True),
    Candidate("wrapper-granian-pyreqwest", "wrapper on granian (ASGI) + pyreqwest → worker", "bench.candidate_wrapper",
              ("--server", "granian", "--client", "pyreqwest"), True),
    Candidate("bare-uvicorn-aiohttp", "bare relay, uvicorn + aiohttp → worker", "bench.bare_relay",
              ("--server", "uvicorn", "--interface", "asgi", "--client", "aiohttp"), False),
    Candidate("bare-uvicorn-pyreqwest", "bare relay, uvicorn + pyreqwest → worker", "bench.bare_relay",
              ("--server", "uvicorn", "--interface", "asgi", "--client", "pyreqwest"), False),
    Candidate("bare-granian-aiohttp", "bare relay, granian (ASGI) + aiohttp → worker", "bench.bare_relay",
              ("--server", "granian", "--interface", "asgi", "--client", "aiohttp"), False),
    Candidate("bare-granian-rsgi-pyreqwest", "bare relay, granian (RSGI) + pyreqwest → worker", "bench.bare_relay",
              ("--server", "granian", "--interface", "rsgi", "--client", "pyreqwest"), False),
)
NAMES = [c.name for c in CANDIDATES]
LABELS = {c.name: c.label for c in CANDIDATES}


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if importlib.util.find_spec(p) is None]


def pins(reqs_bench: Path) -> list[str]:
    """The candidates' requirement lines of requirements-bench.txt, e.g. "granian==2.8.7"."""
    lines = [line.split("#")[0].strip() for line in reqs_bench.read_text().splitlines()]
    return [line for line in lines if re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0] in PACKAGES]


def install(reqs_bench: Path, log) -> None:
    """The candidates' pinned lines of requirements-bench.txt, into this (the project's) environment: the rows
    run the wrapper's own code, so they need the packages next to it, not in .venv-bench/."""
    if not missing_packages():
        return
    wanted = pins(reqs_bench)
    log(f"$ {sys.executable} -m pip install {' '.join(wanted)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted], check=True)


def start(stack: Stack, candidate: Candidate, worker_url: str, model: str) -> Service:
    """One candidate row's process on a free port, answering /health (and, for a wrapper, routing `model`)."""
    port = free_port()
    argv = [sys.executable, "-m", candidate.module, "127.0.0.1", str(port), *candidate.args]
    if not candidate.consul:
        argv += ["--route", f"{model}={worker_url}"]
    proc = stack.procs.start(candidate.name, argv, env=stack.consul_env if candidate.consul else None)
    svc = stack.services[candidate.name] = Service(candidate.name, proc, port)
    wait_until(lambda: get_json(f"{svc.url}/health")[0] == 200, 30, f"{candidate.name}\n{proc.output()[-3000:]}")
    if candidate.consul:
        stack.wait_routable(svc, model)
    return svc


def _figures(results: dict, path: str) -> dict[str, float | None]:
    js, st = results.get("json", {}), (results.get("stream") or {}).get("c1", {})
    direct, row = js.get("direct", {}), js.get(path, {})
    out: dict[str, float | None] = {"ratio": None, "added_p50": None, "added_ttfc": None, "chunk_rate": None,
                                    "cpu_us": None}
    if "16" in row and "16" in direct and direct["16"]["rps"]:
        out["ratio"] = row["16"]["rps"] / direct["16"]["rps"]
        proxy = (row["16"].get("cores") or {}).get("proxy")
        out["cpu_us"] = proxy / row["16"]["rps"] * 1e6 if proxy is not None and row["16"]["rps"] else None
    if "1" in row and "1" in direct:
        out["added_p50"] = row["1"]["p50_ms"] - direct["1"]["p50_ms"]
    if path in st and "direct" in st:
        out["added_ttfc"] = st[path]["ttfc_p50_ms"] - st["direct"]["ttfc_p50_ms"]
        if st["direct"].get("chunk_rate_p50"):
            out["chunk_rate"] = st[path]["chunk_rate_p50"] / st["direct"]["chunk_rate_p50"]
    return out


def figures(results: dict, labels: dict[str, str]) -> dict[str, dict[str, float | None]]:
    """The comparison's four figures for `wrapper` and every candidate row measured."""
    rows = ["wrapper", *(n for n in NAMES if n in results.get("json", {}))]
    return {labels.get(p, p): _figures(results, p) for p in rows}


HEADINGS = ("req/s ÷ direct, c=16", "p50 − direct, c=1 (ms)", "stream TTFC − direct (ms)",
            "one stream's chunks/s ÷ direct", "proxy CPU µs/request, c=16")
FORMATS = (("ratio", ".2f"), ("added_p50", "+.3f"), ("added_ttfc", "+.3f"), ("chunk_rate", ".2f"), ("cpu_us", ".0f"))


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(results: dict, labels: dict[str, str]) -> str:
    """The candidates table of issue #13: the figures its targets are set in."""
    lines = ["## Server and client candidates (issue #13)", "",
             "Targets: ≥ 0.45 × direct at c=16, ≤ +0.30 ms p50 at c=1, ≤ +0.40 ms stream TTFC, one stream's chunk "
             "rate ≥ 0.85 × direct, ≤ 140 µs CPU per request. The bare relays have none of the wrapper's features.", "",
             f"| path | {' | '.join(HEADINGS)} |", "|---|---:|---:|---:|---:|---:|"]
    for label, f in figures(results, labels).items():
        lines.append(f"| {label} | " + " | ".join(_cell(f[key], fmt) for key, fmt in FORMATS) + " |")
    return "\n".join(lines) + "\n"


def _median(rows: list[dict[str, float | None]], key: str, fmt: str) -> str:
    values = [v for f in rows if (v := f[key]) is not None]
    return _cell(statistics.median(values) if values else None, fmt)


def median_table(runs: list[dict], labels: dict[str, str]) -> str:
    """The same table, each figure the median over several runs' results.json (the docs' table)."""
    per_run = [figures(r, labels) for r in runs]
    rows = list(per_run[0])
    lines = [f"| path | {' | '.join(HEADINGS)} (each run) |", "|---|---:|---:|---:|---:|---:|"]
    for label in rows:
        each = [f[label] for f in per_run if label in f]
        cpu_each = ", ".join(_cell(f["cpu_us"], ".0f") for f in each)
        lines.append(f"| {label} | " + " | ".join(_median(each, key, fmt) for key, fmt in FORMATS) + f" ({cpu_each}) |")
    return "\n".join(lines) + "\n"
