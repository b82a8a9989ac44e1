"""The status page's usage table (issue #12): per key name and model, the requests and tokens of the
current and the previous clock hour (UTC), read from the same hourly figures GET /admin/usage serves.
Shown only when the wrapper has keys; a row names a key by its configured name, never the key. Costs one
read of the usage store per page load (none when Redis is down: the circuit is open), none per request."""
from __future__ import annotations

import html
import time
from datetime import UTC, datetime
from typing import Any

from common.errors import OpenAIError

from .limits import Limiter

HOURS = 2  # the current clock hour and the one before: the last hour's figures, whole


async def usage_table(limits: Limiter) -> dict[str, Any]:
    """{"since": ISO time, "store": redis | memory, "rows": [...]} summed per key name and model; with
    "error" if the store is down."""
    now = int(time.time())
    start = now // 3600 * 3600 - (HOURS - 1) * 3600
    base = {"since": _iso(start), "store": limits.backend}
    try:
        found = await limits.usage(start, now + 1, None, None)
    except OpenAIError as exc:  # Redis unreachable: the rest of the page still shows
        return {**base, "rows": [], "error": exc.message}
    sums: dict[tuple[str, str], list[int]] = {}
    for r in found:
        got = sums.setdefault((r.key_name, r.model), [0, 0, 0, 0])
        for i, n in enumerate((r.requests, r.prompt_tokens, r.completion_tokens, r.errors)):
            got[i] += n
    rows = [{"key_name": name, "model": model, "requests": n[0], "prompt_tokens": n[1], "completion_tokens": n[2],
             "total_tokens": n[1] + n[2], "errors": n[3]} for (name, model), n in sorted(sums.items())]
    return {**base, "rows": rows}


def _iso(wall: int) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def render_usage(usage: dict[str, Any] | None) -> str:
    """The page's section for `usage_table`'s data; nothing for an open wrapper (None)."""
    if usage is None:
        return ""
    e = html.escape  # key names come from the config or Consul KV: escaped like every other name
    body = "".join(
        f'<tr data-usage-key="{e(r["key_name"])}" data-usage-model="{e(r["model"])}"><td class="name">'
        f'{e(r["key_name"])}</td><td class="name">{e(r["model"])}</td><td data-requests>{r["requests"]}</td>'
        f'<td data-prompt-tokens>{r["prompt_tokens"]}</td><td data-completion-tokens>{r["completion_tokens"]}</td>'
        f'<td data-errors>{r["errors"]}</td></tr>' for r in usage["rows"])
    if not body:
        body = f'<tr><td colspan="6">{e(usage.get("error", "No request of a key yet."))}</td></tr>'
    return (f'<section><h2>Usage by key</h2><table id="usage"><thead><tr><th>key</th><th>model</th>'
            f'<th>requests</th><th>prompt tokens</th><th>completion tokens</th><th>errors</th></tr></thead>'
            f'<tbody>{body}</tbody></table><p class="note">Since {e(usage["since"])} (this clock hour and the '
            f'one before, UTC), as GET /admin/usage; {_whose(usage["store"])}.</p></section>')


def _whose(store: str) -> str:
    return ("every replica sharing the Redis counts here" if store == "redis"
            else "counted by this process only (no redis.url)")
