"""API keys kept in Consul's KV store (`wrapper.keys_consul_prefix`), followed with one blocking query, so
every wrapper replica sees a new or revoked key as soon as Consul answers (well under a second).

Each entry is `<prefix><name>` holding the JSON of a key entry with `key_sha256` (never the key itself),
as `python3 -m wrapper.keys_cli` writes it. An entry that does not validate is skipped with a warning
naming it; the others still apply. While Consul is unreachable the last keys stay in force.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from common.settings import ApiKey, ConsulSettings
from svc_mgr.consul_client import AsyncConsul, ConsulException, connect

from .auth import KeyRing

log = logging.getLogger(__name__)

WAIT = "30s"  # one blocking query's longest wait
RETRY_AFTER = 1.0  # seconds between tries while Consul is unreachable
_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConsulException, ValueError, KeyError, TypeError)


def parse_entries(entries: list[dict[str, Any]] | None, prefix: str) -> list[ApiKey]:
    """The valid key entries of a KV `?recurse` answer (python-consul2's decoded form)."""
    keys: list[ApiKey] = []
    for entry in entries or ():
        path, value = entry.get("Key", ""), entry.get("Value")
        if path.endswith("/") or not value:  # a folder
            continue
        try:
            key = ApiKey.model_validate_json(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '-'}: {e['msg']}" for e in exc.errors())
            log.warning("Consul KV %s: not a valid key entry, skipped (%s)", path, problems)
            continue
        if key.key is not None:
            log.warning("Consul KV %s: holds a key itself; only key_sha256 is accepted there, skipped", path)
            continue
        if key.name is None:
            key = key.model_copy(update={"name": path[len(prefix):]})
        keys.append(key)
    return keys


class KeyWatch:
    """Keeps a KeyRing's watched keys equal to those under the prefix; started and stopped by the app."""

    def __init__(self, settings: ConsulSettings, prefix: str, ring: KeyRing) -> None:
        self.settings = settings
        self.prefix = prefix
        self.ring = ring
        self.ready = asyncio.Event()  # the first answer arrived
        self._consul: AsyncConsul | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._consul = connect(self.settings)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consul is not None:
            await self._consul.close()

    async def _watch(self) -> None:
        assert self._consul is not None
        index: int | None = None
        failing = False
        known: set[str] = set()
        while True:
            try:
                new_index, entries = await self._consul.kv.get(self.prefix, index=index, recurse=True, wait=WAIT)
            except _FAILURES as exc:
                if not failing:
                    log.warning("cannot read API keys from Consul KV %s (%s); the last keys stay in force",
                                self.prefix, exc or type(exc).__name__)
                failing = True
                await asyncio.sleep(RETRY_AFTER)
                continue
            if failing:
                log.info("reading API keys from Consul KV %s again", self.prefix)
                failing = False
            # a smaller index than before (a restarted agent): start again from the top
            index = int(new_index) if new_index and int(new_index) >= (index or 0) else None
            keys = parse_entries(entries, self.prefix)
            self.ring.replace_watched(keys)
            self.ready.set()
            names = {k.name or "" for k in keys}
            if names != known:  # names only: an operator sees keys come and go, never a key
                log.info("API keys in Consul KV %s: %d (added: %s; removed: %s)", self.prefix, len(keys),
                         ", ".join(sorted(names - known)) or "-", ", ".join(sorted(known - names)) or "-")
                known = names
            if index is None:
                await asyncio.sleep(0.1)  # no index to block on: do not spin


def entry_json(key: ApiKey) -> bytes:
    """A key entry as stored in KV (the CLI's format): set fields only, no key itself."""
    return orjson.dumps(key.model_dump(mode="json", exclude_none=True, exclude={"key"}))
