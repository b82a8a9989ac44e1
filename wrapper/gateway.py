"""The wrapper's own Consul registration (issue #12): one service instance per wrapper, named
`wrapper.gateway_service`, so replicas can see each other; at start-up a wrapper without Redis warns
once when another replica is there, because in-memory rate limits then hold per replica, not in total.

It carries no marker tag (svc_mgr/entry.py), so discovery never routes a request to it. Consul checks its
/health; it is deregistered on shutdown (a crashed one is removed after `worker.deregister_after`, as a
worker is). Only the first process of a `--processes N` wrapper registers: one instance per address.
Nothing here is on the request path; Consul being unreachable or refusing only logs a warning."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from consul.base import ACLPermissionDenied

from common.settings import Settings, secret
from svc_mgr.consul_client import AsyncConsul, ConsulException, connect
from svc_mgr.entry import http_base, service_id

log = logging.getLogger(__name__)

_CONSUL_FAILURES = (TimeoutError, aiohttp.ClientError, OSError, ConsulException)
RETRY_MAX = 30.0  # seconds between two registration attempts while Consul is unreachable, at most


def advertised(host: str) -> str:
    """The address Consul checks: the bound one, or loopback for a wildcard (as a worker's --advertise)."""
    return host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"


class GatewayRegistration:
    """Created at start-up with the address the wrapper listens on; `start()` registers in the background."""

    def __init__(self, settings: Settings, service: str, host: str, port: int) -> None:
        self.settings = settings
        self.service = service
        self.address = advertised(host)
        self.port = port
        self.id = service_id(service, self.address, port)
        self.registered = False
        self._consul: AsyncConsul | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._register_and_look(), name="gateway-registration")

    async def _register_and_look(self) -> None:
        self._consul = consul = connect(self.settings.consul)
        delay, logged = 1.0, False
        while not self.registered:
            try:
                await self._register(consul)
                self.registered = True
            except ACLPermissionDenied:  # retrying cannot help: the token lacks the right
                log.warning("the wrapper's Consul token may not register it as %s (it needs `service \"%s\" { "
                            "policy = \"write\" }`: deploy/consul/acl/wrapper.hcl); replicas without Redis are "
                            "not detected", self.id, self.service)
                return
            except _CONSUL_FAILURES as exc:
                if not logged:  # once: a wrapper works without its registration, it only cannot be found
                    log.warning("could not register the wrapper as %s in Consul at %s (%s: %s); trying again",
                                self.id, self.settings.consul.address, type(exc).__name__, exc)
                    logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        log.info("registered the wrapper as %s in Consul", self.id)
        if secret(self.settings.redis.url) is None:
            with contextlib.suppress(*_CONSUL_FAILURES, KeyError, TypeError):  # an answer of another shape too
                await self._warn_if_replicated(consul)

    async def _register(self, consul: AsyncConsul) -> None:
        worker = self.settings.worker  # a wrapper's check is timed as a worker's
        check = {"http": http_base(self.address, self.port) + "/health", "interval": worker.check_interval,
                 "timeout": worker.check_timeout, "DeregisterCriticalServiceAfter": worker.deregister_after,
                 "status": "passing"}  # registered once serving: it starts out healthy
        await asyncio.wait_for(consul.agent.service.register(
            self.service, service_id=self.id, address=self.address, port=self.port, tags=[], check=check), 10)

    async def _warn_if_replicated(self, consul: AsyncConsul) -> None:
        answer = await asyncio.wait_for(consul.read(f"/v1/health/service/{self.service}", params={"passing": "1"}), 10)
        others = sorted(e["Service"]["ID"] for e in answer.json() if e["Service"]["ID"] != self.id)
        if others:
            log.warning("redis.url is not set and %d other wrapper replica(s) are registered in Consul (%s): each "
                        "keeps its own rate-limit counters in memory, so a key may get its limits once per replica "
                        "(set redis.url; docs/keys-and-limits.md)", len(others), ", ".join(others[:5]))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_CONSUL_FAILURES):
                await self._task
        consul = self._consul
        if consul is None:
            return
        if self.registered:
            try:
                await asyncio.wait_for(consul.agent.service.deregister(self.id), 5)
                log.info("deregistered the wrapper %s", self.id)
            except _CONSUL_FAILURES as exc:
                log.warning("could not deregister %s (%s); Consul's check will remove it", self.id, exc)
        await consul.close()
