"""A background load of chat requests (aiohttp, `concurrency` at once, bounded in count and time) that
counts every failed request: a status other than 200, a connection error or a timeout."""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    ok: Counter[str] = field(default_factory=Counter)  # model -> answered requests
    failed: list[tuple[str, str]] = field(default_factory=list)  # (model, what went wrong)

    def failed_for(self, models: set[str]) -> list[tuple[str, str]]:
        return [f for f in self.failed if f[0] in models]

    def __str__(self) -> str:
        return f"ok {dict(self.ok)}, {len(self.failed)} failed: {self.failed[:10]}"


class BackgroundLoad:
    """`with BackgroundLoad(url, models) as load:` … `load.result` after the block. Requests cycle over
    `models`; the load ends at the block's end, after `max_requests`, or after `max_seconds`."""

    def __init__(self, base_url: str, models: list[str], concurrency: int = 16, max_requests: int = 20_000,
                 max_seconds: float = 60, timeout: float = 30) -> None:
        self.url = base_url + "/chat/completions"
        self.models = models
        self.concurrency, self.max_requests, self.max_seconds, self.timeout = concurrency, max_requests, max_seconds, timeout
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="background-load", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 10)

    def answered(self) -> int:
        return sum(self.result.ok.values())

    async def _run(self) -> None:
        issued = itertools.count()
        models = itertools.cycle(self.models)
        end = time.monotonic() + self.max_seconds

        async def client(session: aiohttp.ClientSession) -> None:
            while not self._stop.is_set() and time.monotonic() < end and next(issued) < self.max_requests:
                model = next(models)
                body = {"model": model, "messages": [{"role": "user", "content": "still there?"}]}
                try:
                    async with session.post(self.url, json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            self.result.ok[model] += 1
                        else:
                            self.result.failed.append((model, f"{resp.status}: {(await resp.text())[:200]}"))
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self.result.failed.append((model, f"{exc.__class__.__name__}: {exc}"))

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=self.concurrency)) as s:
            await asyncio.gather(*(client(s) for _ in range(self.concurrency)))
