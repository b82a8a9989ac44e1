"""Keeps a RoutingTable in step with Consul through blocking queries, in background tasks."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import aiohttp

from common.settings import ConsulSettings

from .consul_client import AsyncConsul, ConsulException, connect
from .entry import MARKER_TAG, EntryReader
from .routing import RoutingTable

log = logging.getLogger(__name__)

_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConsulException, ValueError)


class _Outage:
    """Logs an outage once when it starts and once when it ends, not once per retry."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            log.warning("Consul at %s unreachable (%s: %s); serving from the last routing table, retrying",
                        self.address, exc.__class__.__name__, exc)
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info("Consul at %s reachable again", self.address)
        self.down = False


def _next_index(old: int, new: int) -> int:
    # Consul's rule for blocking queries: an index that went backwards (agent restarted) resets to 0.
    return new if new >= old else 0


class Discovery:
    def __init__(self, settings: ConsulSettings, table: RoutingTable, wait: str = "30s") -> None:
        self.settings = settings
        self.table = table
        self.wait = wait
        self.outage = _Outage(settings.address)
        self._consul: AsyncConsul | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._main: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.read_entry = EntryReader()

    async def start(self) -> None:
        self._consul = connect(self.settings)
        self._main = asyncio.create_task(self._watch_services(), name="consul-services")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._consul is not None:
            await self._consul.close()

    async def _changes(self, query: Callable[[int | None], Awaitable[tuple[str, Any]]],
                       report_recovery: bool = False) -> AsyncGenerator[Any, None]:
        """Each new answer of a Consul blocking query, forever; failures back off and are reported once."""
        index, backoff = 0, 0.2
        while True:
            try:
                new_index, answer = await query(index or None)
            except _FAILURES as exc:
                self.outage.failed(exc)
                index = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5)
                continue
            index, backoff = _next_index(index, int(new_index)), 0.2
            if report_recovery:
                self.outage.ok()
            yield answer

    async def _watch_services(self) -> None:
        assert self._consul is not None
        catalog = self._consul.catalog
        async for services in self._changes(lambda index: catalog.services(index=index, wait=self.wait),
                                            report_recovery=True):
            ours = {name for name, tags in services.items() if MARKER_TAG in (tags or [])}
            first_answers = []
            for name in ours - self._tasks.keys():
                answered = asyncio.Event()
                first_answers.append(answered.wait())
                self._tasks[name] = asyncio.create_task(self._watch_health(name, answered),
                                                        name=f"consul-health-{name}")
            for name in self._tasks.keys() - ours:
                self._tasks.pop(name).cancel()
                self.table.drop_service(name)
            if not self.ready.is_set():
                # the table is ready once every service known at start-up has reported its instances
                if first_answers:
                    await asyncio.wait([asyncio.ensure_future(w) for w in first_answers], timeout=5)
                self.ready.set()

    async def _watch_health(self, service: str, answered: asyncio.Event) -> None:
        assert self._consul is not None
        health = self._consul.health
        failing = False
        async for entries in self._changes(
                lambda index: health.service(service, index=index, wait=self.wait, passing=True)):
            try:
                self.table.set_service(service, filter(None, map(self.read_entry, entries)))
                failing = False
            except Exception:  # a bug here must not end this service's watch for good: log it, keep watching
                if not failing:
                    log.exception("could not update the routing table for service %r; keeping its last "
                                  "instances and watching on", service)
                failing = True
            answered.set()
