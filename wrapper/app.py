"""The wrapper's HTTP app: authenticate, route by model, relay the worker's answer."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from common import wire
from common.errors import model_not_found
from common.http import (
    CLIENT_CLOSED,
    JSON,
    ClientGone,
    SSEResponse,
    json_response,
    openai_app,
    presents_secret,
    read_body,
    request_id,
    unless_disconnected,
)
from common.settings import Settings, load_api_keys, secret
from common.wire import Capability
from svc_mgr import POLICIES, Discovery, RouteRules, RoutingTable

from .auth import KeyRing
from .hop import Hop
from .key_watch import KeyWatch
from .limits import Limiter
from .usage_api import usage_endpoint


class WrapperHealth(BaseModel):
    status: str
    pid: int | None = None  # only for a caller with the worker secret: it identifies the process
    models: int  # routable models
    in_flight: int
    consul: str  # "up" or "down"
    limits: dict[str, str | int] | None = None  # the rate-limit store: memory or redis, up or down, outages

log = logging.getLogger(__name__)


class Wrapper:
    """The wrapper: one routing table, one pooled hop, one Consul watch; created at start-up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = RoutingTable(POLICIES[settings.wrapper.balancer], settings.wrapper.cooldown,
                                  RouteRules(settings.wrapper.routes))
        prefix = settings.wrapper.keys_consul_prefix
        self.keys = KeyRing(load_api_keys(settings), watched=prefix is not None)
        self.key_watch = KeyWatch(settings.consul, prefix, self.keys) if prefix is not None else None
        self.limits = Limiter(settings)
        worker_secret = secret(settings.worker.secret)
        self.hop = Hop(self.table, settings.wrapper, worker_secret)
        self._secret = worker_secret.encode() if worker_secret else None
        self.discovery = Discovery(settings.consul, self.table, settings.wrapper)
        self.created = wire.now()

    async def chat(self, request: Request) -> Response:
        return await self._route(request, Capability.CHAT)

    async def completion(self, request: Request) -> Response:
        return await self._route(request, Capability.COMPLETION)

    async def embeddings(self, request: Request) -> Response:
        return await self._route(request, Capability.EMBEDDING)

    async def _route(self, request: Request, capability: Capability) -> Response:
        rid = request_id(request)
        limits = self.settings.limits
        key = self.keys.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, limits.max_body_bytes, timeout=limits.body_timeout)
        model, stream = self._admit(raw, capability)
        if not self.keys.allows(key, model):
            raise model_not_found(model)
        ticket = await self.limits.admit(key, model, raw, stream)  # wrapper/limits.py: 429 over a limit
        if ticket is not None:
            return await ticket.settle(self._relay(request, rid, capability, model, ticket.body, stream))
        return await self._relay(request, rid, capability, model, raw, stream)

    async def _relay(self, request: Request, rid: str, capability: Capability, model: str, raw: bytes,
                     stream: bool) -> Response:
        try:
            attempt = await unless_disconnected(
                request, self.hop.open(model, wire.PATHS[capability], raw, rid, whole=not stream))
        except ClientGone:
            log.debug("request %s: client went away; abandoned", rid)
            return Response(status_code=CLIENT_CLOSED)
        # DEBUG, not INFO: a log line per request costs a third of the throughput (docs/performance.md)
        log.debug("request %s: %s %s -> %s %d", rid, capability, model, attempt.instance.id, attempt.status)
        headers = attempt.headers()  # DirectRoutes adds X-Request-ID
        if attempt.content is None and attempt.content_type.startswith(wire.SSE):
            return SSEResponse(self.hop.stream(attempt), attempt.status, headers, on_close=attempt.close)
        content = attempt.content if attempt.content is not None else await self.hop.read(attempt)
        attempt.close()
        return Response(content, status_code=attempt.status, media_type=JSON, headers=headers)

    def _admit(self, raw: bytes, capability: Capability) -> tuple[str, bool]:
        """Check the body; return its model and stream flag. The parsed body is dropped on return, so it
        is not held while the worker works (only `raw` is sent on)."""
        body = wire.parse_body(raw, self.settings.limits)
        model = wire.require_routing_fields(body, capability)
        wire.check_fields(body, capability, self.settings.limits)
        return model, wire.is_stream(body)

    async def models(self, request: Request) -> Response:
        key = self.keys.authenticate(request.headers.get("authorization"))
        entries = []
        for name in self.table.models():
            if self.keys.allows(key, name):
                owner = self.table.instances(name)[0].service
                entries.append(wire.model_entry(name, self.created, owner))
        return json_response(wire.model_list(entries))

    async def model(self, request: Request, model: str) -> Response:
        key = self.keys.authenticate(request.headers.get("authorization"))
        name = model
        instances = self.table.instances(name)
        if not instances or not self.keys.allows(key, name):
            raise model_not_found(name)
        return json_response(wire.model_entry(name, self.created, instances[0].service))

    async def health(self, request: Request) -> Response:
        health = {"status": "ok", "models": len(self.table.models()), "in_flight": self.table.in_flight(),
                  "consul": "down" if self.discovery.outage.down else "up",
                  "limits": {"store": self.limits.backend, "state": "down" if self.limits.down else "up",
                             "outages": self.limits.outages, "unchecked": self.limits.unchecked}}
        if presents_secret(request, self._secret):
            health["pid"] = os.getpid()
        return json_response(health)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncGenerator[None, None]:
        await self.hop.start()
        await self.limits.start()
        if self.key_watch is not None:
            await self.key_watch.start()
        await self.discovery.start()
        try:
            await asyncio.wait_for(self.discovery.ready.wait(), 5)
        except TimeoutError:
            log.warning("Consul at %s has not answered yet; starting with an empty routing table",
                        self.settings.consul.address)
        if self.key_watch is not None and not self.key_watch.ready.is_set():
            with contextlib.suppress(TimeoutError):  # until then, only the configured keys are known
                await asyncio.wait_for(self.key_watch.ready.wait(), 5)
        try:
            yield
        finally:
            if self.key_watch is not None:
                await self.key_watch.stop()
            await self.limits.close()
            await self.discovery.stop()
            await self.hop.close()

    def app(self) -> ASGIApp:
        api, asgi = openai_app("openai-api-wrapper", lifespan=self.lifespan, posts={
            wire.PATHS[Capability.CHAT]: self.chat, wire.PATHS[Capability.COMPLETION]: self.completion,
            wire.PATHS[Capability.EMBEDDING]: self.embeddings})
        api.add_api_route("/v1/models", self.models, methods=["GET"], response_model=wire.ModelList)
        api.add_api_route("/v1/models/{model:path}", self.model, methods=["GET"], response_model=wire.ModelObject)
        api.add_api_route("/health", self.health, methods=["GET"], response_model=WrapperHealth)
        api.add_api_route("/admin/usage", usage_endpoint(self.keys, self.limits), methods=["GET"])
        return asgi
