"""Where rate-limit and usage counters live: each process's memory, or one Redis that every wrapper replica
shares. Both stores keep the same figures the same way:

- requests and tokens per key in a sliding window of `rate_window` seconds, made of 60 buckets (so a limit
  holds over any window's length, with 1/60 of it as resolution: never the 2x of fixed windows at a
  boundary). A request's estimated tokens are charged at admission (so parallel requests see each
  other) and replaced with the real usage when the answer's usage is known;
- requests in flight per key (max_concurrent);
- tokens per calendar day or month (budget);
- usage per key name, model and hour: requests, prompt tokens, completion tokens, errors.

Redis: each admission and each settlement is one atomic Lua script (one round trip), timed by Redis'
own clock so replicas with skewed clocks agree. A settlement is needed only for a key with tpm,
max_concurrent or a budget; usage is added up in each process and written once a second (`add_usage`).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

BUCKETS = 60  # per window
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")
SEP = "\x1f"  # between key name, model and figure in a usage field: no name or model contains it
CONCURRENCY_TTL_MS = 15 * 60 * 1000  # a crashed wrapper's in-flight count is forgotten after this


@dataclass(frozen=True, slots=True)
class Quota:
    """One set of counters a request is admitted against (a key's, or a key's for one model): which
    limits (None: unlimited), and the tokens it estimates."""

    counter: str  # the counters' id: the key's digest, shortened (and the model, for a key's model limits)
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    budget: int | None
    budget_period: str  # e.g. "d2026-11-26" or "m2026-11": the budget's counter, per calendar period
    budget_ttl: int  # seconds the period's counter is kept
    estimate: int  # tokens charged at admission, corrected when the usage is known


# why a request was refused
RPM, TPM, CONCURRENCY, BUDGET = "rpm", "tpm", "concurrency", "budget"
REFUSALS = (None, RPM, TPM, CONCURRENCY, BUDGET)


@dataclass(frozen=True, slots=True)
class Figures:
    """One quota's window after an admission."""

    requests: int  # in the window, this request included if admitted
    requests_reset: float  # seconds until the oldest request in the window leaves it
    tokens: int
    tokens_reset: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """All of a request's quotas admit it (and all counted it), or none does (and none counted it)."""

    refused: str | None
    refused_by: int  # the index of the quota that refused it; -1 when admitted
    figures: tuple[Figures, ...]  # one per quota, in order
    bucket: int  # the window bucket the estimate was charged to


@dataclass(frozen=True, slots=True)
class Settlement:
    """What an answer cost: the estimate is taken back from its bucket and the real tokens charged."""

    quotas: tuple[Quota, ...]
    bucket: int | None  # None: nothing was admitted (a refusal only counts usage)
    charge: int  # tokens charged to the key's tpm and budget: the usage, or the estimate when none is known
    prompt_tokens: int
    completion_tokens: int
    error: bool
    key_name: str
    model: str
    hour: int  # unix time of the hour's start
    named: bool = True  # the key has a configured name (else key_name is made from its digest)


@dataclass(frozen=True, slots=True)
class UsageRow:
    key_name: str
    model: str
    hour: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int


UsageKey = tuple[int, str, str]  # (hour, key name, model)
UsageFigures = dict[UsageKey, list[int]]  # -> requests, prompt tokens, completion tokens, errors


class Store(Protocol):
    async def admit(self, quotas: tuple[Quota, ...], window: float) -> Verdict: ...
    async def settle(self, s: Settlement, window: float) -> None: ...
    async def add_usage(self, figures: UsageFigures, ttl: int) -> bool: ...  # True once written
    async def usage(self, hours: list[int]) -> list[UsageRow]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def usage_rows(hour: int, fields: dict[str, int]) -> list[UsageRow]:
    """The rows of one hour's `name SEP model SEP figure -> count` fields."""
    figures: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for name, count in fields.items():
        key_name, model, figure = name.split(SEP)
        figures[(key_name, model)][figure] = int(count)
    return [UsageRow(k, m, hour, **{f: got.get(f, 0) for f in USAGE_FIELDS}) for (k, m), got in figures.items()]


# ---- in memory --------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Window:
    buckets: dict[int, int] = field(default_factory=dict)

    def used(self, now_bucket: int) -> tuple[int, int | None]:
        """(sum, oldest bucket) of the live buckets, forgetting the others."""
        for b in [b for b in self.buckets if b <= now_bucket - BUCKETS]:
            del self.buckets[b]
        return sum(self.buckets.values()), min(self.buckets, default=None)

    def add(self, bucket: int, n: int) -> None:
        self.buckets[bucket] = self.buckets.get(bucket, 0) + n


def reset_after(oldest: int | None, now: float, size: float) -> float:
    """Seconds until the oldest live bucket (or, with none, the current one) leaves the window."""
    first = oldest if oldest is not None else math.floor(now / size)
    return max((first + BUCKETS) * size - now, 0.0)


class MemoryStore:
    """The counters of one process (redis.url null): limits hold per process, not across replicas."""

    def __init__(self) -> None:
        self.requests: dict[str, _Window] = defaultdict(_Window)
        self.tokens: dict[str, _Window] = defaultdict(_Window)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.budgets: dict[tuple[str, str], int] = defaultdict(int)
        self.usage_by_hour: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def _refusal(self, q: Quota, requests: int, tokens: int, period: str) -> str | None:
        if q.rpm is not None and requests + 1 > q.rpm:
            return RPM
        if q.tpm is not None and tokens >= q.tpm:
            return TPM
        if q.max_concurrent is not None and self.in_flight[q.counter] >= q.max_concurrent:
            return CONCURRENCY
        if q.budget is not None and self.budgets[(q.counter, period)] >= q.budget:
            return BUDGET
        return None

    async def admit(self, quotas: tuple[Quota, ...], window: float) -> Verdict:
        now = time.time()
        size = window / BUCKETS
        bucket = math.floor(now / size)
        refused, refused_by = None, -1
        seen: list[tuple[int, int | None, int, int | None]] = []
        for i, q in enumerate(quotas):
            requests, oldest_request = self.requests[q.counter].used(bucket)
            tokens, oldest_token = self.tokens[q.counter].used(bucket)
            why = self._refusal(q, requests, tokens, q.budget_period)
            if why is not None and refused is None:
                refused, refused_by = why, i
            seen.append((requests, oldest_request, tokens, oldest_token))
        if refused is None:
            for i, q in enumerate(quotas):
                requests, oldest_request, tokens, oldest_token = seen[i]
                if q.rpm is not None:
                    self.requests[q.counter].add(bucket, 1)
                    seen[i] = (requests + 1, bucket if oldest_request is None else oldest_request, tokens, oldest_token)
                if q.tpm is not None:
                    self.tokens[q.counter].add(bucket, q.estimate)
                    seen[i] = (seen[i][0], seen[i][1], tokens + q.estimate, oldest_token)
                if q.max_concurrent is not None:
                    self.in_flight[q.counter] += 1
        figures = tuple(Figures(r, reset_after(oldest_r, now, size), t, reset_after(oldest_t, now, size))
                        for r, oldest_r, t, oldest_t in seen)
        return Verdict(refused, refused_by, figures, bucket)

    async def settle(self, s: Settlement, window: float) -> None:
        if s.bucket is None:
            return
        now_bucket = math.floor(time.time() / (window / BUCKETS))
        for q in s.quotas:
            if q.tpm is not None:
                self.tokens[q.counter].add(s.bucket, -q.estimate)
                self.tokens[q.counter].add(now_bucket, s.charge)
            if q.max_concurrent is not None:
                self.in_flight[q.counter] = max(self.in_flight[q.counter] - 1, 0)
            if q.budget is not None:
                self.budgets[(q.counter, q.budget_period)] += s.charge

    async def add_usage(self, figures: UsageFigures, ttl: int) -> bool:
        for (hour, name, model), counts in figures.items():
            fields = self.usage_by_hour[hour]
            for figure, count in zip(USAGE_FIELDS, counts, strict=True):
                fields[f"{name}{SEP}{model}{SEP}{figure}"] += count
        oldest = time.time() - ttl
        for hour in [h for h in self.usage_by_hour if h < oldest]:
            del self.usage_by_hour[hour]
        return True

    async def usage(self, hours: list[int]) -> list[UsageRow]:
        return [row for h in hours if h in self.usage_by_hour for row in usage_rows(h, self.usage_by_hour[h])]

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass
