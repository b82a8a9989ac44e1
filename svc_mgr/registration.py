"""A worker's own Consul registration: register once it can serve, keep it there, remove it on exit."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from urllib.parse import urlencode

import aiohttp

from common.settings import ConsulSettings, WorkerSettings
from common.wire import Capability

from .consul_client import AsyncConsul, ConsulException, connect
from .entry import WEIGHT_META, model_tags, service_id

log = logging.getLogger(__name__)


class ConsulUnreachable(Exception):
    pass


class Registration:
    def __init__(self, consul_settings: ConsulSettings, worker: WorkerSettings, *, name: str, host: str,
                 port: int, models: Sequence[str], health_url: str,
                 capabilities: Sequence[Capability] | None = None, weight: int = 1) -> None:
        self.consul_settings = consul_settings
        self.worker = worker
        self.name = name
        self.id = service_id(name, host, port)
        self.host = host
        self.port = port
        self.models = list(models)
        self.capabilities = capabilities  # None: claim none (read back as the legacy set)
        self.weight = weight
        # Consul's check names the instance it expects: a worker that took over the port of a stale
        # registration answers 503 to it, so the stale entry goes critical instead of passing for that worker
        self.check_url = f"{health_url}?{urlencode({'id': self.id})}"
        self._consul: AsyncConsul | None = None
        self._keepalive: asyncio.Task | None = None

    @property
    def consul(self) -> AsyncConsul:
        if self._consul is None:
            self._consul = connect(self.consul_settings)
        return self._consul

    async def _register_once(self) -> None:
        check = {
            "http": self.check_url,
            "interval": self.worker.check_interval,
            "timeout": self.worker.check_timeout,
            "DeregisterCriticalServiceAfter": self.worker.deregister_after,
            # the worker registers only after /health answered, so it starts out healthy
            "status": "passing",
        }
        await self.consul.agent.service.register(
            self.name, service_id=self.id, address=self.host, port=self.port,
            tags=model_tags(self.models, self.capabilities), meta=self._meta(), check=check)

    def _meta(self) -> dict[str, str]:
        meta = {"models": ",".join(self.models)[:512]}
        if self.weight != 1:
            meta[WEIGHT_META] = str(self.weight)
        return meta

    async def register(self) -> None:
        """Register, retrying a few times; ConsulUnreachable names the address if it never works."""
        delay = 0.5
        for attempt in range(1, self.worker.register_attempts + 1):
            try:
                await self._register_once()
                log.info("registered %s (models: %s) in Consul at %s", self.id, ", ".join(self.models),
                         self.consul_settings.address)
                return
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if attempt == self.worker.register_attempts:
                    raise ConsulUnreachable(
                        f"cannot reach Consul at {self.consul_settings.address} after {attempt} attempts "
                        f"({exc.__class__.__name__}: {exc}); set CONSUL_HTTP_ADDR or consul.host/port in the config"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4)
            except ConsulException as exc:
                raise ConsulUnreachable(f"Consul at {self.consul_settings.address} refused the registration: "
                                        f"{exc}") from None

    def start_keepalive(self) -> None:
        self._keepalive = asyncio.create_task(self._keep_registered(), name="consul-keepalive")

    async def _keep_registered(self) -> None:
        """Register again when the entry vanished (a dev agent restarted empty) or Consul came back."""
        reachable = True
        while True:
            await asyncio.sleep(self.worker.keepalive_interval)
            try:
                services = await self.consul.agent.services()
                if self.id not in services:
                    log.warning("registration %s is gone from Consul; registering again", self.id)
                    await self._register_once()
                if not reachable:
                    log.info("Consul at %s is reachable again", self.consul_settings.address)
                reachable = True
            except (TimeoutError, aiohttp.ClientError, OSError, ConsulException) as exc:
                if reachable:
                    log.warning("Consul at %s unreachable (%s); still serving, will retry",
                                self.consul_settings.address, exc.__class__.__name__)
                reachable = False

    async def deregister(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        try:
            await asyncio.wait_for(self.consul.agent.service.deregister(self.id), 5)
            log.info("deregistered %s", self.id)
        except (TimeoutError, aiohttp.ClientError, OSError, ConsulException) as exc:
            log.warning("could not deregister %s (%s); Consul's health check will remove it", self.id, exc)

    async def close(self) -> None:
        if self._consul is not None:
            await self._consul.close()
