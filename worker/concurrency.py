"""Per-worker concurrency: N requests at once, a bounded queue behind them, 429 past that."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from common.errors import RateLimited


class ConcurrencyLimit:
    def __init__(self, limit: int | None, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return self._waiting

    async def acquire(self) -> None:
        if self._slots is None:
            return
        if self._slots.locked() and self._waiting >= self.queue:
            raise RateLimited("This worker is at its concurrency limit; retry shortly.",
                              code="worker_busy", headers={"Retry-After": "1"})
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def hold(self) -> Callable[[], None]:
        """Acquire a slot; returns its release function, which is safe to call more than once."""
        await self.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.release()

        return release

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
