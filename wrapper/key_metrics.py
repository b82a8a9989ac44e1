"""Per-key usage in /metrics (issue #12): requests, prompt and completion tokens and errors by the key's
configured name and model, plus how often the rate limiter's Redis went down and how many requests went
through unchecked meanwhile. Counted where the Limiter already adds up a key's usage (`Limiter.record`),
so a request without a key costs nothing and one with a key a dict lookup and a few counter updates.

Labels: the key's `name` (a key without one is counted as `unnamed`: never the key or its digest) and the
model as the request metrics label it (`unknown` for a name not in the routing table, so a client cannot
grow the series by inventing model names)."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from common.metrics import PREFIX, UNKNOWN, adder

from .counters import Settlement

UNNAMED = "unnamed"  # the key_name label of a key configured without a name


class _KeySeries:
    """One key name and model's counters, bound once, as adders (common.metrics.adder: the value stores'
    own `inc`, as the request metrics update theirs)."""

    __slots__ = ("requests", "prompt_tokens", "completion_tokens", "errors")

    def __init__(self, metrics: KeyMetrics, key_name: str, model: str) -> None:
        self.requests = adder(metrics.requests.labels(key_name, model))
        self.prompt_tokens = adder(metrics.prompt_tokens.labels(key_name, model))
        self.completion_tokens = adder(metrics.completion_tokens.labels(key_name, model))
        self.errors = adder(metrics.errors.labels(key_name, model))


class KeyMetrics:
    """Made once per process at start-up, in the wrapper's metrics registry; `known(model)` says whether a
    model may be a label value."""

    def __init__(self, registry: CollectorRegistry, known: Callable[[str], bool]) -> None:
        self.known = known
        labels = ["key_name", "model"]
        self.requests = Counter(f"{PREFIX}key_requests_total", "Requests of each API key (by its configured "
                                "name) and model, as /admin/usage counts them", labels, registry=registry)
        self.prompt_tokens = Counter(f"{PREFIX}key_prompt_tokens_total", "Prompt tokens of each API key's "
                                     "answers, by key name and model", labels, registry=registry)
        self.completion_tokens = Counter(f"{PREFIX}key_completion_tokens_total", "Completion tokens of each API "
                                         "key's answers, by key name and model", labels, registry=registry)
        self.errors = Counter(f"{PREFIX}key_errors_total", "Requests of each API key answered with an error "
                              "(status >= 400, the limits' own 429s included), by key name and model", labels,
                              registry=registry)
        self.outages = Counter(f"{PREFIX}rate_limiter_outages_total", "Times the rate limiter's Redis became "
                               "unreachable (redis.url)", registry=registry)
        self.unchecked = Counter(f"{PREFIX}rate_limiter_unchecked_total", "Requests let through without their "
                                 "limits checked while Redis was unreachable (redis.fail_closed: false)",
                                 registry=registry)
        self._series: dict[tuple[str, str], _KeySeries] = {}

    def count(self, settlement: Settlement) -> None:
        """One answered (or refused) request of a key."""
        s = settlement
        model = s.model if self.known(s.model) else UNKNOWN
        name = s.key_name if s.named else UNNAMED
        series = self._series.get((name, model))
        if series is None:
            series = self._series[(name, model)] = _KeySeries(self, name, model)
        series.requests(1)
        if s.prompt_tokens:  # an update costs a lock (and a file write in multiprocess mode): skip the zeros
            series.prompt_tokens(s.prompt_tokens)
        if s.completion_tokens:
            series.completion_tokens(s.completion_tokens)
        if s.error:
            series.errors(1)
