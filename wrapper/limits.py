"""Per-key rate limits, budgets and usage (issue #12): checked before a worker is chosen, charged when the
answer's usage is known. The counters are in wrapper/counters.py (memory) or wrapper/redis_store.py.

An unreachable Redis never holds requests up: each call gives up after `redis.timeout`, the first failure
opens a circuit (logged once, counted in `outages`), and while it is open no call is tried; a background
probe closes it as soon as Redis answers again. Meanwhile requests go through unchecked (fail open) or
get 503 (`redis.fail_closed`).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import logging
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import orjson
from starlette.responses import Response

from common import wire
from common.errors import OpenAIError, Unavailable, insufficient_quota, rate_limit_exceeded
from common.http import SSEResponse
from common.settings import ApiKey, Limits, Settings, secret
from common.usage import StreamUsage, TokenUsage, from_json_answer

from .counters import (
    BUDGET,
    CONCURRENCY,
    RPM,
    TPM,
    MemoryStore,
    Quota,
    Settlement,
    Store,
    UsageFigures,
    UsageRow,
    Verdict,
)
from .key_metrics import KeyMetrics
from .resp import RespError

log = logging.getLogger(__name__)
T = TypeVar("T")

ESTIMATE_BYTES_PER_TOKEN = 4  # a request's tokens are estimated from its size until its usage is known
USAGE_FLUSH = 1.0  # seconds between two writes of a process's usage figures to the store


def _store_failures() -> tuple[type[BaseException], ...]:
    """A store's outage. redis-py is imported only with a Redis URL (it imports OpenTelemetry's SDK: ~8 MiB of
    RSS for every wrapper without Redis), so its RedisError is caught once something loaded it; whatever
    raises one did. An except clause evaluates this only when an exception is on its way."""
    redis_errors = sys.modules.get("redis.exceptions")
    return (RespError, OSError, TimeoutError) + ((redis_errors.RedisError,) if redis_errors is not None else ())


def key_name(key: ApiKey) -> str:
    """The name usage is kept under: never the key itself."""
    return key.name or f"key-{key.digest.hex()[:8]}"


def _budget_period(per: str, now: float) -> tuple[str, int]:
    """The budget counter's calendar period (UTC) and how long to keep it."""
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    return (f"d{day:%Y-%m-%d}", 2 * 86400) if per == "day" else (f"m{day:%Y-%m}", 32 * 86400)


def model_limits(key: ApiKey, model: str) -> tuple[str, Limits] | None:
    """The key's limits for `model` (its exact name first, else the first glob that matches), if any."""
    if not key.model_limits:
        return None
    if model in key.model_limits:
        return model, key.model_limits[model]
    return next(((p, lim) for p, lim in key.model_limits.items() if fnmatch.fnmatchcase(model, p)), None)


def _quota(counter: str, limits: ApiKey | Limits, raw: bytes, now: float) -> Quota:
    budget = limits.budget
    period, period_ttl = _budget_period(budget.per, now) if budget is not None else ("", 0)
    return Quota(counter, limits.rpm, limits.tpm, limits.max_concurrent, budget.tokens if budget is not None else None,
                 period, period_ttl, len(raw) // ESTIMATE_BYTES_PER_TOKEN if limits.tpm is not None else 0)


def quotas_of(key: ApiKey, model: str, raw: bytes, now: float) -> tuple[Quota, ...]:
    """The counters a request is admitted against: the key's, and the key's for this model."""
    counter = key.digest.hex()[:16]
    quotas: tuple[Quota, ...] = (_quota(counter, key, raw, now),) if key.limited else ()
    found = model_limits(key, model)
    if found is not None and found[1].limited:
        # per model, not per pattern: `gpt-*: {rpm: 5}` allows 5 for each gpt model
        quotas += (_quota(f"{counter}:{model}", found[1], raw, now),)
    return quotas


class Limiter:
    """One per wrapper process, created at start-up; `admit` is called once per authenticated request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.redis
        self.window = settings.wrapper.rate_window
        self.usage_ttl = settings.wrapper.usage_days * 86400 + 3600
        self.url = secret(settings.redis.url)
        self.store: Store = MemoryStore()
        self.down = False  # the circuit: Redis failed and has not answered a probe since
        self.outages = 0  # times Redis became unreachable (for /health; #10's /metrics may export it)
        self.unchecked = 0  # requests let through unchecked while it was (fail open)
        self._probe: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._usage: UsageFigures = {}  # added up here, written once a second: no store call per request for it
        self.metrics: KeyMetrics | None = None  # /metrics' per-key counters (set by the wrapper when metrics are on)

    @property
    def backend(self) -> str:
        return "redis" if self.url else "memory"

    async def start(self) -> None:
        if self.url:
            from .redis_store import RedisStore  # only a wrapper configured with Redis needs redis-py loaded
            self.store = RedisStore(self.url, self.settings.timeout, self.settings.prefix)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_every_second())

    async def close(self) -> None:
        for task in (self._probe, self._flusher):
            if task is not None:
                task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self.flush_usage()
        await self.store.close()

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH)
            await self.flush_usage()

    async def flush_usage(self) -> None:
        """Write the usage added up since the last flush; kept for the next one if the store is down."""
        if not self._usage or self.down:
            return
        figures, self._usage = self._usage, {}
        store = self.store
        if await self._call(lambda: store.add_usage(figures, self.usage_ttl)) is None:
            for key, counts in figures.items():  # merged back: written once the store is back
                self._add(key, counts)

    def _add(self, key: tuple[int, str, str], counts: list[int]) -> None:
        got = self._usage.get(key)
        if got is None:
            self._usage[key] = list(counts)
        else:
            for i, n in enumerate(counts):
                got[i] += n

    # ---- the circuit --------------------------------------------------------------------------------

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The store's answer, or None when it is unreachable (now, or since a failure not yet probed)."""
        if self.down:
            return None
        try:
            async with asyncio.timeout(self.settings.timeout * 4):  # a backstop: the socket timeouts come first
                return await call()
        except _store_failures() as exc:
            self._went_down(exc)
            return None

    def _went_down(self, exc: BaseException) -> None:
        if self.down:
            return
        self.down = True
        self.outages += 1
        if self.metrics is not None:
            self.metrics.outages.inc()
        mode = "answering 503" if self.settings.fail_closed else "letting requests through unchecked"
        log.error("Redis unreachable (%s: %s): rate limits and usage are not kept; %s until it is back",
                  type(exc).__name__, exc, mode)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_store())

    async def _wait_for_store(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retry_interval)
            try:
                async with asyncio.timeout(self.settings.timeout * 4):
                    await self.store.ping()
            except _store_failures():
                continue
            self.down = False
            log.warning("Redis is back: rate limits and usage apply again")
            return

    def _unreachable(self) -> None:
        """Admission without the store: 503 if fail-closed, else let it through (counted)."""
        if self.settings.fail_closed:
            raise Unavailable("The rate limiter is unavailable; try again shortly.", code="rate_limiter_unavailable",
                              headers={"Retry-After": "1"})
        self.unchecked += 1
        if self.metrics is not None:
            self.metrics.unchecked.inc()

    # ---- requests -----------------------------------------------------------------------------------

    async def admit(self, key: ApiKey | None, model: str, raw: bytes, stream: bool) -> Ticket | None:
        """The request's ticket (None for an open wrapper); raises 429 over a limit or budget."""
        if key is None:
            return None
        now = time.time()
        quotas = quotas_of(key, model, raw, now)
        # a stream's tokens are known only from its usage chunk: ask for it when the client did not
        strip_usage = stream and not wire.include_usage(orjson.loads(raw))
        ticket = Ticket(self, key, model, quotas, wire.with_include_usage(raw) if strip_usage else raw, strip_usage,
                        int(now // 3600 * 3600))
        if not quotas:
            return ticket
        store = self.store
        verdict = await self._call(lambda: store.admit(quotas, self.window))
        if verdict is None:
            self._unreachable()
            ticket.admitted = False
            return ticket
        ticket.bucket = verdict.bucket
        ticket.headers = self._headers(quotas, verdict)
        if verdict.refused is not None:
            ticket.admitted = False
            await ticket.finish(None, error=True)
            raise self._refusal(key, model, quotas, verdict, ticket.headers)
        return ticket

    @staticmethod
    def _headers(quotas: tuple[Quota, ...], verdict: Verdict) -> dict[str, str]:
        """OpenAI's headers for the tightest of the quotas (the least remaining) in each dimension."""
        pairs = list(zip(quotas, verdict.figures, strict=True))
        headers: dict[str, str] = {}
        limited = [(q.rpm - f.requests, q.rpm, f.requests_reset) for q, f in pairs if q.rpm is not None]
        if limited:
            remaining, limit, reset = min(limited)
            headers.update(wire.ratelimit_headers("requests", limit, remaining, reset))
        limited = [(q.tpm - f.tokens, q.tpm, f.tokens_reset) for q, f in pairs if q.tpm is not None]
        if limited:
            remaining, limit, reset = min(limited)
            headers.update(wire.ratelimit_headers("tokens", limit, remaining, reset))
        return headers

    @staticmethod
    def _refusal(key: ApiKey, model: str, quotas: tuple[Quota, ...], verdict: Verdict,
                 headers: dict[str, str]) -> OpenAIError:
        q, f = quotas[verdict.refused_by], verdict.figures[verdict.refused_by]
        whose = f"key '{key_name(key)}'" + (f" for model '{model}'" if ":" in q.counter else "")
        if verdict.refused == BUDGET:
            per = "day" if q.budget_period.startswith("d") else "month"
            return insufficient_quota(f"The {whose} has used its budget of {q.budget} tokens per {per}.", headers)
        if verdict.refused == RPM:
            what, wait = f"requests per minute (RPM): limit {q.rpm}", f.requests_reset
        elif verdict.refused == TPM:
            what, wait = f"tokens per minute (TPM): limit {q.tpm}, used {f.tokens}", f.tokens_reset
        else:
            assert verdict.refused == CONCURRENCY
            what, wait = f"concurrent requests: limit {q.max_concurrent}", 1.0
        return rate_limit_exceeded(f"Rate limit reached for {whose} on {what}. Please try again in "
                                   f"{wire.duration(wait)}.", {**headers, **wire.retry_after_headers(wait)})

    async def record(self, settlement: Settlement) -> None:
        s = settlement
        self._add((s.hour, s.key_name, s.model), [1, s.prompt_tokens, s.completion_tokens, int(s.error)])
        if self.metrics is not None:
            self.metrics.count(s)
        if s.bucket is not None and any(q.tpm is not None or q.max_concurrent is not None or q.budget is not None
                                        for q in s.quotas):
            store = self.store
            await self._call(lambda: store.settle(s, self.window))

    def record_soon(self, settlement: Settlement) -> None:
        """`record` in a task of its own: for a response that ends outside any coroutine."""
        task = asyncio.get_running_loop().create_task(self.record(settlement))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def usage(self, start: int, end: int, key_name: str | None, model: str | None) -> list[UsageRow]:
        """The hourly rows from the hour of `start` up to `end` (unix times), filtered."""
        now = int(time.time())
        start, end = max(start, now - self.usage_ttl), min(end, now + 3600)  # only hours that can have figures
        hours = list(range(start // 3600 * 3600, end, 3600))
        await self.flush_usage()  # this process's latest figures; other replicas' are at most USAGE_FLUSH old
        store = self.store
        rows = await self._call(lambda: store.usage(hours))
        if rows is None:
            raise Unavailable("The usage store is unavailable; try again shortly.", code="usage_unavailable",
                              headers={"Retry-After": "1"})
        return sorted((r for r in rows if (key_name is None or r.key_name == key_name)
                       and (model is None or r.model == model)), key=lambda r: (r.hour, r.key_name, r.model))


class Ticket:
    """One admitted request of a key: the body to send on, the headers for its answer, and its settlement
    once the answer's usage is known (exactly once, however the answer ends)."""

    def __init__(self, limiter: Limiter, key: ApiKey, model: str, quotas: tuple[Quota, ...], body: bytes,
                 strip_usage: bool, hour: int) -> None:
        self.limiter = limiter
        self.key = key
        self.model = model
        self.quotas = quotas
        self.body = body
        self.strip_usage = strip_usage  # the usage chunk was asked for by the wrapper, not the client
        self.hour = hour
        self.headers: dict[str, str] = {}
        self.admitted = True  # counters were taken (and so are given back)
        self.bucket: int | None = None
        self.finished = False

    def _settlement(self, usage: TokenUsage | None, error: bool) -> Settlement:
        # no usage (an error, a client gone mid-stream): the estimate stays charged, so aborting a stream
        # before its usage chunk does not make its tokens free
        charge = usage.total if usage is not None else max((q.estimate for q in self.quotas), default=0)
        usage = usage or TokenUsage(0, 0)
        return Settlement(self.quotas, self.bucket if self.admitted and self.quotas else None, charge,
                          usage.prompt_tokens, usage.completion_tokens, error, key_name(self.key), self.model,
                          self.hour, bool(self.key.name))

    async def finish(self, usage: TokenUsage | None, error: bool) -> None:
        if not self.finished:
            self.finished = True
            await self.limiter.record(self._settlement(usage, error))

    def finish_soon(self, usage: TokenUsage | None, error: bool) -> None:
        if not self.finished:
            self.finished = True
            self.limiter.record_soon(self._settlement(usage, error))

    async def settle(self, relay: Awaitable[Response]) -> Response:
        """The relayed answer with the key's headers, charged once its usage is known."""
        try:
            response = await relay
        except OpenAIError as exc:
            exc.headers.update(self.headers)
            await self.finish(None, error=True)
            raise
        except BaseException:
            self.finish_soon(None, error=True)
            raise
        response.raw_headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        if isinstance(response, SSEResponse):
            response.chunks = self._metered(response.chunks)
            on_close = response.on_close

            def close() -> None:  # a stream that never started is settled here
                if on_close is not None:
                    on_close()
                self.finish_soon(None, error=True)

            response.on_close = close
        else:
            ok = response.status_code == 200
            await self.finish(from_json_answer(bytes(response.body)) if ok else None, error=not ok)
        return response

    async def _metered(self, chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        meter = StreamUsage()
        pending = b""  # an unfinished event, held while the wrapper's own usage chunk may be in it
        try:
            async with aclosing(chunks) as source:
                async for chunk in source:
                    meter.feed(chunk)
                    if self.strip_usage:
                        chunk, pending = _without_usage_chunk(pending + chunk)
                    if chunk:
                        yield chunk
            if pending:
                yield pending
        finally:
            # settled before the stream's end reaches the client, so its next request sees the charge
            task = asyncio.ensure_future(self.finish(meter.usage, error=False))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)


def _without_usage_chunk(data: bytes) -> tuple[bytes, bytes]:
    """(whole events of `data` less the usage-only chunk, the unfinished rest)."""
    end = data.rfind(b"\n\n")
    if end < 0:
        return b"", data
    events = data[:end + 2]
    if b'"usage"' in events:
        events = b"".join(e + b"\n\n" for e in events[:-2].split(b"\n\n") if not wire.is_usage_chunk(e))
    return events, data[end + 2:]
