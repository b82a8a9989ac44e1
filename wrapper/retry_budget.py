"""A retry budget (as in Finagle): retries may add at most a share of the recent requests, so a sick fleet
is not hit with max_attempts times its load. O(1) per call: one counter per second of the window."""
from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_SECONDS = 10


class RetryBudget:
    """Allows a retry while the retries of the last WINDOW_SECONDS stay below `ratio` times the requests
    of that window plus `min_per_second` times its length (the reserve a quiet wrapper retries on)."""

    def __init__(self, ratio: float, min_per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.reserve = min_per_second * WINDOW_SECONDS
        self._clock = clock
        self._requests = [0] * WINDOW_SECONDS  # one slot per second, reused round the ring
        self._retries = [0] * WINDOW_SECONDS
        self._total_requests = 0  # the sums over the ring, kept so no call adds the slots up
        self._total_retries = 0
        self._second = int(clock())

    def _slot(self) -> int:
        """The current second's slot, after emptying the slots of the seconds that left the window."""
        now = int(self._clock())
        if now != self._second:
            for second in range(self._second + 1, self._second + 1 + min(now - self._second, WINDOW_SECONDS)):
                i = second % WINDOW_SECONDS
                self._total_requests -= self._requests[i]
                self._total_retries -= self._retries[i]
                self._requests[i] = self._retries[i] = 0
            self._second = now
        return now % WINDOW_SECONDS

    def request(self) -> None:
        """Count one request (its first attempt)."""
        self._requests[self._slot()] += 1
        self._total_requests += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        i = self._slot()
        if self._total_retries + 1 > self.ratio * self._total_requests + self.reserve:
            return False
        self._retries[i] += 1
        self._total_retries += 1
        return True
