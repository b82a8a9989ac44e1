"""Streaming measurements with an aiohttp client: time to first chunk, chunks per second, and whether
chunks arrive one by one (a relay that buffers would deliver several per read); for a real model, time to
first token and tokens per second."""
from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import aiohttp


@dataclass
class StreamStats:
    streams: int
    chunks_per_stream: float       # SSE events before [DONE]
    ttfc_p50_ms: float             # request sent -> first event received
    ttfc_p99_ms: float
    chunk_rate_p50: float          # events per second over a whole stream (request sent -> [DONE])
    stream_ms_p50: float
    separate_pct: float            # reads that carried exactly one event, as a share of events
    max_events_per_read: int
    errors: int

    def as_dict(self) -> dict:
        return asdict(self)


async def _events_per_read(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The complete SSE events of each network read, keep-alive comments left out."""
    if resp.status != 200:
        raise RuntimeError(f"stream answered {resp.status}: {(await resp.read())[:300]!r}")
    buf = b""
    async for data in resp.content.iter_any():
        buf += data
        parts = buf.split(b"\n\n")
        buf = parts.pop()
        yield [part for part in (p.strip() for p in parts) if part and not part.startswith(b":")]


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> tuple[float, int, float, int, int]:
    t0 = time.perf_counter()
    first = None
    events = 0
    single_reads = 0
    max_per_read = 0
    done = False
    async with session.post(url, data=body, headers=headers) as resp:
        async for parts in _events_per_read(resp):
            n = 0
            for part in parts:
                if part == b"data: [DONE]":
                    done = True
                    continue
                n += 1
            if n:
                if first is None:
                    first = time.perf_counter()
                events += n
                single_reads += n == 1
                max_per_read = max(max_per_read, n)
    end = time.perf_counter()
    if not done:
        raise RuntimeError("stream ended without data: [DONE]")
    return (first or end) - t0, events, end - t0, single_reads, max_per_read


async def _measure(url: str, body: bytes, streams: int, headers: dict, max_seconds: float) -> StreamStats:
    ttfc, rates, totals = [], [], []
    events_total = single_total = max_per_read = errors = 0
    deadline = time.perf_counter() + max_seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await _one(session, url, body, headers)  # warm the connection
        for _ in range(streams):
            if time.perf_counter() > deadline:
                break
            try:
                first, events, total, single, most = await _one(session, url, body, headers)
            except (TimeoutError, RuntimeError, aiohttp.ClientError):
                errors += 1
                continue
            ttfc.append(first)
            totals.append(total)
            rates.append(events / total)
            events_total += events
            single_total += single
            max_per_read = max(max_per_read, most)
    if not ttfc:
        raise RuntimeError(f"no stream from {url} succeeded")
    q = statistics.quantiles(ttfc, n=100, method="inclusive") if len(ttfc) > 1 else [ttfc[0]] * 99
    return StreamStats(
        streams=len(ttfc), chunks_per_stream=events_total / len(ttfc),
        ttfc_p50_ms=statistics.median(ttfc) * 1000, ttfc_p99_ms=q[98] * 1000,
        chunk_rate_p50=statistics.median(rates), stream_ms_p50=statistics.median(totals) * 1000,
        separate_pct=100.0 * single_total / events_total if events_total else 0.0,
        max_events_per_read=max_per_read, errors=errors)


def measure(url: str, body: bytes, streams: int, headers: dict | None = None, max_seconds: float = 60) -> StreamStats:
    """`streams` streams one after another (concurrency 1), bounded by `max_seconds`."""
    return asyncio.run(_measure(url, body, streams, {"Content-Type": "application/json", **(headers or {})},
                                max_seconds))


# ---- a real model's token stream -----------------------------------------------------------------

@dataclass
class TokenStream:
    """One streamed chat answer of a real model: when its first text came, and how fast its tokens came."""

    ttft_ms: float             # request sent -> first event carrying text
    first_event_ms: float      # request sent -> first event of any kind (the worker's role chunk, often)
    worker_first_event_ms: float | None  # the worker's own arrival -> first event, from its /metrics
    completion_tokens: int     # from the usage chunk (stream_options.include_usage)
    stream_s: float            # request sent -> [DONE]
    tokens_per_s: float        # completion_tokens / stream_s
    finish_reason: str | None

    def as_dict(self) -> dict:
        return asdict(self)


WORKER_TTFT_SUM = re.compile(rb"^oaw_worker_time_to_first_token_seconds_sum\{[^}]*\} (\S+)$", re.M)


async def _worker_ttft_sum(session: aiohttp.ClientSession, metrics_url: str | None) -> float | None:
    """The worker's total of first-event times so far (a Prometheus histogram's _sum), or None."""
    if metrics_url is None:
        return None
    async with session.get(metrics_url) as resp:
        found = WORKER_TTFT_SUM.findall(await resp.read())
    return sum(float(v) for v in found) if found else None


async def _token_stream(session: aiohttp.ClientSession, url: str, body: bytes,
                        worker_metrics: str | None = None) -> TokenStream:
    before = await _worker_ttft_sum(session, worker_metrics)
    t0 = time.perf_counter()
    first: float | None = None
    first_event: float | None = None
    tokens, finish, done = 0, None, False
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        async for parts in _events_per_read(resp):
            for part in parts:
                if not part.startswith(b"data: "):
                    continue
                if first_event is None:
                    first_event = time.perf_counter()
                if part == b"data: [DONE]":
                    done = True
                    continue
                event = json.loads(part[6:])
                for choice in event.get("choices") or ():
                    if first is None and (choice.get("delta") or {}).get("content"):
                        first = time.perf_counter()
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    if not done or first is None or first_event is None:
        raise RuntimeError(f"stream from {url} ended without text or without data: [DONE]")
    after = await _worker_ttft_sum(session, worker_metrics)
    worker_first = (after - before) * 1000 if after is not None and before is not None else None
    return TokenStream(ttft_ms=(first - t0) * 1000, first_event_ms=(first_event - t0) * 1000,
                       worker_first_event_ms=worker_first, completion_tokens=tokens, stream_s=end - t0,
                       tokens_per_s=tokens / (end - t0), finish_reason=finish)


async def _token_streams(urls: dict[str, str], body: bytes, repetitions: int,
                         worker_metrics: str | None) -> dict[str, list[TokenStream]]:
    out: dict[str, list[TokenStream]] = {name: [] for name in urls}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for url in urls.values():  # warm each path's connection (and the model) once
            await _token_stream(session, url, body)
        for _ in range(repetitions):
            for name, url in urls.items():  # interleaved, so drift on the machine hits every path alike
                out[name].append(await _token_stream(session, url, body, worker_metrics))
    return out


def token_streams(urls: dict[str, str], body: bytes, repetitions: int,
                  worker_metrics: str | None = None) -> dict[str, list[TokenStream]]:
    """`repetitions` streams per path (base URL of /v1/chat/completions), one at a time, paths interleaved.
    With `worker_metrics` (the worker's /metrics URL) each stream also gets the worker's own time to its
    first event, so what the path adds can be told from what the model took."""
    return asyncio.run(_token_streams(urls, body, repetitions, worker_metrics))
