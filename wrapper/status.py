"""GET /status (an HTML page) and GET /status.json: what the wrapper routes to and how it is going.

One function (`status_data`) gathers the figures; the JSON is that data, the page renders it. Built only
when someone asks, from what the wrapper already holds: no Consul call. Neither shows a prompt or a key.
Everything from Consul (service, instance and model names) is attacker-controlled and is escaped.
"""
from __future__ import annotations

import html
import os
import time
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from common.errors import OpenAIError
from common.http import Endpoint, json_response
from common.settings import Settings
from svc_mgr import Discovery, Instance, RoutingTable

from .auth import KeyRing
from .limits import Limiter
from .observe import Observer
from .recent import WINDOW_SECONDS
from .status_usage import render_usage, usage_table


class StatusSource(Protocol):
    """What the status page reads of the wrapper (wrapper.app.Wrapper, which builds the endpoints)."""

    settings: Settings
    table: RoutingTable
    discovery: Discovery
    observer: Observer
    keys: KeyRing
    limits: Limiter


REFRESH_SECONDS = 5


def version() -> str:
    try:
        return metadata.version("openai-api-wrapper")
    except metadata.PackageNotFoundError:
        return _pyproject_version()


def _pyproject_version() -> str:
    import tomllib
    from pathlib import Path

    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


VERSION = version()  # read once, at import


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _instance_row(inst: Instance, check: str, routed: bool, now_wall: float, now_mono: float) -> dict[str, Any]:
    cooling = inst.cooled_until > now_mono
    last_error = inst.last_error
    return {
        "id": inst.id, "service": inst.service, "address": f"{inst.address}:{inst.port}", "models": list(inst.models),
        "check": check,  # passing | critical (Consul's checks) | unchecked (registered without a check)
        "routed": routed,  # whether the routing table sends requests to it
        "cooling_down": cooling,
        "cooling_until": _iso(now_wall + inst.cooled_until - now_mono) if cooling else None,
        "in_flight": inst.in_flight,
        "last_error": last_error[1] if last_error else None,
        "last_error_at": _iso(last_error[0]) if last_error else None,
        "seen_since": _iso(inst.seen_since),
    }


def status_data(wrapper: StatusSource) -> dict[str, Any]:
    """Everything both views show, as JSON-ready data."""
    now_wall, now_mono = time.time(), time.monotonic()
    table, discovery = wrapper.table, wrapper.discovery
    routed = {inst.id: inst for model in table.models() for inst in table.instances(model)}
    rows: dict[str, dict[str, Any]] = {}
    for inst, passing in discovery.registered():
        live = routed.get(inst.id, inst)  # the table's object holds the in-flight count and cool-down
        rows[inst.id] = _instance_row(live, "passing" if passing else "critical", inst.id in routed, now_wall, now_mono)
    for inst in routed.values():
        if inst.id not in rows:
            rows[inst.id] = _instance_row(inst, "unchecked", True, now_wall, now_mono)
    instances = sorted(rows.values(), key=lambda r: (r["service"], r["id"]))

    claimed: dict[str, int] = {}  # one pass: the fleet may hold thousands of instances and models
    for row in instances:
        for name in row["models"]:
            claimed[name] = claimed.get(name, 0) + 1
    models = []
    for name in sorted(claimed.keys() | set(table.models())):
        healthy = len(table.instances(name))
        figures = wrapper.observer.recent.figures(name)
        models.append({
            "name": name, "healthy": healthy, "total": max(claimed.get(name, 0), healthy),
            "in_flight": figures.in_flight, "requests": figures.requests, "errors": figures.errors,
            "rps": _round(figures.rps), "error_rate": _round(figures.error_rate, 4),
            "ttft_p50_ms": _round(figures.ttft_p50 * 1000 if figures.ttft_p50 is not None else None, 1),
            "ttft_p95_ms": _round(figures.ttft_p95 * 1000 if figures.ttft_p95 is not None else None, 1),
        })

    settings = wrapper.settings
    heard = discovery.heard_at
    return {
        "wrapper": {
            "version": VERSION, "pid": os.getpid(), "processes": settings.wrapper.processes,
            "started_at": _iso(now_wall - (now_mono - wrapper.observer.recent.started)),
            "uptime_seconds": round(now_mono - wrapper.observer.recent.started, 1),
            "consul": {"address": settings.consul.address, "reachable": not discovery.outage.down,
                       "routing_table_age_seconds": _round(now_mono - heard if heard is not None else None, 1)},
            "limits": {
                "balancer": settings.wrapper.balancer, "max_attempts": settings.wrapper.max_attempts,
                "cooldown_seconds": settings.wrapper.cooldown, "max_connections_to_workers": settings.wrapper.max_connections,
                "timeouts_seconds": settings.wrapper.timeouts.model_dump(),
                **settings.limits.model_dump(),
            },
            "api_keys": "required" if not wrapper.keys.open else "open",
        },
        "window_seconds": WINDOW_SECONDS,
        "consul_wait": settings.wrapper.consul_wait,
        # each process counts its own requests: with --processes N this is the share of the one that answered
        "figures_from": "this process",
        "generated_at": _iso(now_wall),
        "models": models,
        "instances": instances,
    }


# ---- the endpoints ---------------------------------------------------------------------------------

def _authorize(wrapper: StatusSource, request: Request) -> None:
    key = wrapper.keys.authenticate(request.headers.get("authorization"))
    if key is not None and not key.admin:
        raise OpenAIError("This key may not read the status page; it needs `admin: true`.", status=403,
                          type="permission_error", code="admin_key_required")


def status_endpoints(wrapper: StatusSource) -> tuple[Endpoint, Endpoint]:
    """(GET /status, GET /status.json) for `wrapper`."""

    async def page(request: Request) -> Response:
        _authorize(wrapper, request)
        return HTMLResponse(render(await _with_usage(wrapper, status_data(wrapper))), headers=NO_STORE)

    async def data(request: Request) -> Response:
        _authorize(wrapper, request)
        return json_response(await _with_usage(wrapper, status_data(wrapper)), headers=NO_STORE)

    return page, data


NO_STORE = {"Cache-Control": "no-store"}


async def _with_usage(wrapper: StatusSource, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the usage by key (wrapper/status_usage.py) when the wrapper has keys."""
    if not wrapper.keys.open:
        data["usage"] = await usage_table(wrapper.limits)
    return data


# ---- the page --------------------------------------------------------------------------------------

def e(value: Any) -> str:
    return html.escape("—" if value is None else str(value), quote=True)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _ago(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "—"
    seconds = (now - datetime.fromisoformat(iso)).total_seconds()
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _state(row: dict[str, Any]) -> tuple[str, str]:
    """(css class, word) for an instance: what a person looks for first."""
    if row["check"] == "critical":
        return "down", "down"
    if not row["routed"]:
        return "down", "not routed"
    if row["cooling_down"]:
        return "cooling", "cooling down"
    return "up", "up"


def _model_row(m: dict[str, Any]) -> str:
    health = "up" if m["healthy"] == m["total"] else ("down" if m["healthy"] == 0 else "cooling")
    return (f'<tr data-model="{e(m["name"])}"><td class="name">{e(m["name"])}</td>'
            f'<td class="healthy {health}"><span data-healthy>{m["healthy"]}</span> / '
            f'<span data-total>{m["total"]}</span></td>'
            f'<td data-in-flight>{m["in_flight"]}</td><td data-rps>{m["rps"]:.2f}</td>'
            f'<td data-error-rate>{_rate(m["error_rate"])}</td>'
            f'<td data-ttft-p50>{_ms(m["ttft_p50_ms"])}</td><td data-ttft-p95>{_ms(m["ttft_p95_ms"])}</td></tr>')


def _instance_html(row: dict[str, Any], now: datetime) -> str:
    css, word = _state(row)
    cooling = f'until {e(row["cooling_until"][11:19])} UTC' if row["cooling_down"] else "no"
    error = (f'{e(row["last_error"])} <small>({_ago(row["last_error_at"], now)})</small>'
             if row["last_error"] else "—")
    return (f'<tr data-instance="{e(row["id"])}" class="row-{css}"><td data-state class="state {css}">{word}</td>'
            f'<td class="name">{e(row["id"])}</td><td>{e(row["service"])}</td><td>{e(row["address"])}</td>'
            f'<td data-check>{e(row["check"])}</td><td>{cooling}</td><td>{row["in_flight"]}</td>'
            f'<td>{error}</td><td>{_ago(row["seen_since"], now)}</td>'
            f'<td class="models">{e(", ".join(row["models"]))}</td></tr>')


_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#6b7280;--line:#e5e7eb;--up:#15803d;--down:#b91c1c;--cool:#b45309}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;background:var(--bg);color:var(--ink)}
header{background:#111827;color:#f9fafb;padding:14px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header span{color:#cbd5e1}
main{padding:16px 24px;display:grid;gap:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card b{display:block;font-size:20px}.card small{color:var(--mute)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:4px 0 8px}
h2{font-size:15px;margin:10px 16px}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:6px 16px;border-top:1px solid var(--line);white-space:nowrap}
th{color:var(--mute);font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.name{font-family:ui-monospace,monospace}td.models{color:var(--mute);white-space:normal}
.state{font-weight:700}.up{color:var(--up)}.down{color:var(--down)}.cooling{color:var(--cool)}
tr.row-down{background:#fef2f2}tr.row-cooling{background:#fffbeb}
.note{color:var(--mute);margin:0 16px;font-size:12px}details{margin:0 16px}pre{font-size:12px}
"""


def _limits_line(limits: dict[str, Any]) -> str:
    timeouts = limits["timeouts_seconds"]
    return " · ".join([
        f"balancer {e(limits['balancer'])}", f"{limits['max_attempts']} attempts", f"cool-down {limits['cooldown_seconds']:g} s",
        f"first byte ≤ {timeouts['first_byte']:g} s", f"total ≤ {timeouts['total']:g} s",
        f"body ≤ {limits['max_body_bytes'] // 1024} KiB", f"{limits['max_connections']} client connections / process"])


def render(data: dict[str, Any]) -> str:
    w = data["wrapper"]
    consul = w["consul"]
    now = datetime.fromisoformat(data["generated_at"])
    reach = '<b class="up">reachable</b>' if consul["reachable"] else '<b class="down">unreachable</b>'
    age = consul["routing_table_age_seconds"]
    models = "".join(_model_row(m) for m in data["models"]) or '<tr><td colspan="7">No model registered.</td></tr>'
    instances = ("".join(_instance_html(r, now) for r in data["instances"])
                 or '<tr><td colspan="10">No worker registered.</td></tr>')
    limits = "\n".join(f"{e(k)}: {e(v)}" for k, v in w["limits"].items())
    minutes = data["window_seconds"] // 60
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>openai-api-wrapper status</title>
<style>{_CSS}</style></head><body>
<header><h1>openai-api-wrapper</h1><span>version {e(w["version"])}</span><span>pid {w["pid"]}</span>
<span>generated {e(data["generated_at"])}</span></header>
<main>
<div class="cards">
<div class="card" id="consul"><small>Consul ({e(consul["address"])})</small>{reach}</div>
<div class="card" id="table-age"><small>Consul's last answer (at least every {e(data["consul_wait"])})</small><b>{"—" if age is None else f"{age:.1f} s ago"}</b></div>
<div class="card" id="uptime"><small>uptime</small><b>{w["uptime_seconds"]:.0f} s</b></div>
<div class="card" id="model-count"><small>models</small><b>{len(data["models"])}</b></div>
<div class="card" id="instance-count"><small>instances up / registered</small><b>{sum(_state(r)[0] != "down" for r in data["instances"])} / {len(data["instances"])}</b></div>
<div class="card"><small>API keys</small><b>{e(w["api_keys"])}</b></div>
</div>
<section><h2>Models</h2><table id="models"><thead><tr><th>model</th><th>healthy / total</th><th>in flight</th>
<th>req/s</th><th>errors</th><th>TTFT p50</th><th>TTFT p95</th></tr></thead><tbody>{models}</tbody></table>
<p class="note">Rates, errors (5xx and 429) and time to first token (streams) over the last {minutes} minutes,
counted by this process (pid {w["pid"]}{f" of {w['processes']}" if w["processes"] > 1 else ""}).</p></section>
<section><h2>Instances</h2><table id="instances"><thead><tr><th>state</th><th>instance</th><th>service</th>
<th>address</th><th>Consul check</th><th>cooling down</th><th>in flight</th><th>last error</th><th>seen since</th>
<th>models</th></tr></thead><tbody>{instances}</tbody></table></section>
<section><h2>Limits</h2><p class="note" id="limits">{_limits_line(w["limits"])}</p>
<details><summary>all configured limits</summary><pre>{limits}</pre></details></section>
{render_usage(data.get("usage"))}
</main></body></html>"""
