"""The last few minutes of traffic per model, for the status page: requests and errors per second in a
ring of one-second buckets, time to first token in a bounded sample. O(1) per request; read only when
someone looks at /status. Each wrapper process has its own (with --processes N the page shows the one
process that answered it)."""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 300  # what "the last minutes" means on the page
TTFT_SAMPLES = 1024  # per model: the latest first-token times kept (older ones leave the sample)


def is_error(status: int) -> bool:
    """An answer that counts against the service: the gateway or a worker failed (5xx), or was full (429)."""
    return status >= 500 or status == 429


class ModelRecent:
    """One model's ring: slot i holds the second `stamps[i]`; a slot from an older second is reset when
    its second comes round again."""

    __slots__ = ("stamps", "requests", "errors", "ttft", "in_flight")

    def __init__(self) -> None:
        self.stamps = [-1] * WINDOW_SECONDS
        self.requests = [0] * WINDOW_SECONDS
        self.errors = [0] * WINDOW_SECONDS
        self.ttft: deque[tuple[float, float]] = deque(maxlen=TTFT_SAMPLES)  # (when, seconds)
        self.in_flight = 0

    def count(self, second: int, error: bool) -> None:
        i = second % WINDOW_SECONDS
        if self.stamps[i] != second:
            self.stamps[i], self.requests[i], self.errors[i] = second, 0, 0
        self.requests[i] += 1
        self.errors[i] += error


@dataclass(frozen=True)
class Figures:
    """What the page shows for a model over the window."""

    requests: int
    errors: int
    rps: float
    error_rate: float | None  # None: no request in the window
    ttft_p50: float | None  # seconds; None: no stream's first token in the window
    ttft_p95: float | None
    in_flight: int


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Recent:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, ModelRecent] = {}
        self.started = clock()

    def _of(self, model: str) -> ModelRecent:
        recent = self._models.get(model)
        if recent is None:
            recent = self._models[model] = ModelRecent()
        return recent

    # ---- the request path: O(1) each ----------------------------------------------------------

    def admitted(self, model: str) -> None:
        self._of(model).in_flight += 1

    def finished(self, model: str, status: int, admitted: bool = True) -> None:
        """A request for `model` answered with `status` (for a stream: when it ended)."""
        recent = self._of(model)
        if admitted:
            recent.in_flight -= 1
        recent.count(int(self._clock()), is_error(status))

    def first_token(self, model: str, seconds: float) -> None:
        self._of(model).ttft.append((self._clock(), seconds))

    # ---- the status page ---------------------------------------------------------------------

    def figures(self, model: str) -> Figures:
        recent = self._models.get(model) or ModelRecent()
        now = self._clock()
        oldest = int(now) - WINDOW_SECONDS + 1
        requests = errors = 0
        for stamp, n, e in zip(recent.stamps, recent.requests, recent.errors, strict=True):
            if stamp >= oldest:
                requests += n
                errors += e
        # the rate over the time this process has been counting, up to the whole window
        span = min(float(WINDOW_SECONDS), max(1.0, now - self.started))
        ttfts = sorted(s for when, s in recent.ttft if when >= now - WINDOW_SECONDS)
        return Figures(requests, errors, requests / span, errors / requests if requests else None,
                       percentile(ttfts, 0.5) if ttfts else None, percentile(ttfts, 0.95) if ttfts else None,
                       recent.in_flight)
