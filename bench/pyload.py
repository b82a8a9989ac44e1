"""A small aiohttp load generator, used only when wrk is not installed (e.g. the smoke test in CI).
It prints the same BENCH_JSON line as bench/wrk_post.lua. Being Python, it costs more CPU per request
than wrk, so its numbers are for checking that the harness works, not for comparing with wrk's.

    python3 bench/pyload.py URL BODY_FILE|- CONCURRENCY DURATION_S [MAX_REQUESTS] [AUTH]
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


async def main(url: str, body_path: str, concurrency: int, duration: float, max_requests: int, auth: str) -> dict:
    body = None if body_path == "-" else Path(body_path).read_bytes()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "status": 0, "timeout": 0}
    nbytes = 0
    start = time.perf_counter()
    stop_at = start + duration
    issued = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal nbytes, issued
        while time.perf_counter() < stop_at and (not max_requests or issued < max_requests):
            issued += 1
            t0 = time.perf_counter()
            try:
                if body is None:
                    resp_cm = session.get(url, headers=headers)
                else:
                    resp_cm = session.post(url, data=body, headers=headers)
                async with resp_cm as resp:
                    data = await resp.read()
                    nbytes += len(data)
                    if resp.status >= 400:
                        errors["status"] += 1
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except aiohttp.ClientConnectionError:
                errors["connect"] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), "bytes": nbytes,
            "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99),
            "mean_us": (sum(latencies) / len(latencies) * 1e6) if latencies else 0.0,
            "max_us": int(latencies[-1] * 1e6) if latencies else 0,
            "err_connect": errors["connect"], "err_read": errors["read"], "err_write": 0,
            "err_status": errors["status"], "err_timeout": errors["timeout"]}


if __name__ == "__main__":
    a = sys.argv[1:]
    result = asyncio.run(main(a[0], a[1], int(a[2]), float(a[3]), int(a[4]) if len(a) > 4 else 0,
                              a[5] if len(a) > 5 else ""))
    print("BENCH_JSON " + json.dumps(result))
