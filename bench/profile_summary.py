"""Summarise a py-spy profile in raw (collapsed stack) format: where the wrapper's CPU time goes.

    python3 bench/profile_summary.py bench/results/wrapper-profile.folded

Each line of the input is `frame;frame;...;leaf COUNT`, a frame being `function (path:line)`. The same
file opens in speedscope (https://www.speedscope.app accepts collapsed stacks) or flamegraph.pl.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def _split(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("func"), m.group("path")


_ROOT = Path(__file__).resolve().parent.parent
_STDLIB = Path(sysconfig.get_paths()["stdlib"])


def package(path: str) -> str:
    """A coarse owner for a source file as py-spy names it (shortened against sys.path): the top-level
    package (`aiohttp`, `starlette`, `asyncio (stdlib)`...) or, for this repo, `wrapper/hop.py` etc."""
    if not path or path.startswith("<frozen"):
        return "stdlib" if path else "native/unknown"
    p = path.replace("\\", "/")
    if "site-packages/" in p:
        p = p.split("site-packages/", 1)[1]
    elif p.startswith(str(_STDLIB) + "/"):
        p = p[len(str(_STDLIB)) + 1:]
    elif p.startswith(str(_ROOT) + "/"):
        p = p[len(str(_ROOT)) + 1:]
    if "/" in p:
        top = p.split("/", 1)[0]
        if top in ("common", "worker", "wrapper", "svc_mgr", "generators"):
            return p
        return f"{top} (stdlib)" if (_STDLIB / top).exists() else top
    # a bare file name: a module of this repo's packages, an entry script, or a stdlib module
    for mod in ("common", "worker", "wrapper", "svc_mgr", "generators"):
        if (_ROOT / mod / p).exists():
            return f"{mod}/{p}"
    if (_ROOT / p).exists():
        return p
    if (_STDLIB / p).exists():
        return f"{p.removesuffix('.py')} (stdlib)"
    return p


def summarize(folded: Path, top: int = 25) -> dict:
    total = 0
    self_by_pkg: Counter[str] = Counter()
    self_by_func: Counter[str] = Counter()
    incl_by_func: Counter[str] = Counter()
    incl_by_pkg: Counter[str] = Counter()
    for line in folded.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or " " not in line:
            continue
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        parsed = [_split(f) for f in frames]
        # py-spy's first frame is the thread name ("process 123:"...) in some versions; skip non-frames
        leaf_func, leaf_path = parsed[-1]
        self_by_pkg[package(leaf_path)] += count
        self_by_func[f"{leaf_func} ({package(leaf_path)})"] += count
        seen_f: set[str] = set()
        seen_p: set[str] = set()
        for func, path in parsed:
            key = f"{func} ({package(path)})"
            if key not in seen_f:
                seen_f.add(key)
                incl_by_func[key] += count
            pkg = package(path)
            if pkg not in seen_p:
                seen_p.add(pkg)
                incl_by_pkg[pkg] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self_by_package": pct(self_by_pkg), "inclusive_by_package": pct(incl_by_pkg),
            "self_by_function": pct(self_by_func), "inclusive_by_function": pct(incl_by_func)}


def render(summary: dict) -> str:
    out = [f"py-spy samples: {summary['samples']} (CPU-active only, all threads)", ""]
    for title, key in (("Self time by package/module (where the CPU actually is)", "self_by_package"),
                       ("Inclusive time by package/module", "inclusive_by_package"),
                       ("Self time by function", "self_by_function"),
                       ("Inclusive time by function", "inclusive_by_function")):
        out.append(f"## {title}")
        out.extend(f"{v:6.1f} %  {k}" for k, v in summary[key])
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(summarize(Path(sys.argv[1]))))
