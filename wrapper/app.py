"""The wrapper's HTTP app: authenticate, route by model, relay the worker's answer."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator
from typing import NamedTuple

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from common import multipart, tracing, wire
from common.errors import model_not_found, unsupported_capability
from common.http import (
    CLIENT_CLOSED,
    JSON,
    ClientGone,
    SSEResponse,
    json_response,
    openai_app,
    presents_secret,
    raw_header,
    read_body,
    request_id,
    unless_disconnected,
)
from common.metrics import Observation
from common.settings import ApiKey, Settings, load_api_keys, secret
from common.wire import Capability
from svc_mgr import POLICIES, Discovery, RouteRules, RoutingTable
from svc_mgr.affinity import Affinity

from .affinity_key import SESSION_HEADER, affinity_key
from .auth import KeyRing
from .gateway import GatewayRegistration
from .hop import Hop
from .key_metrics import KeyMetrics
from .key_watch import KeyWatch
from .limits import Limiter
from .metrics import SERVER_TIMING, WrapperMetrics
from .model_plan import SERVED_MODEL_HEADER, ModelPlan, Reroute, renamed_json, renamed_stream
from .observe import Observer
from .status import status_endpoints
from .unsupported import add_unsupported_routes
from .usage_api import usage_endpoint


class Admitted(NamedTuple):
    """A request past its checks, on its way to a worker."""

    request: Request
    rid: str
    capability: Capability
    model: str
    stream: bool
    content_type: str | None  # a form's, sent on with its boundary
    affinity: bytes | None  # the affinity balancer's key
    obs: Observation | None  # the metrics' record of it


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

    def __init__(self, settings: Settings, listen: tuple[str, int] | None = None) -> None:
        """`listen`: (host, port) to register the wrapper in Consul under (wrapper/gateway.py); None: not."""
        self.settings = settings
        aff = settings.wrapper.affinity
        self.affinity = (Affinity(aff.epsilon, aff.max_keys, aff.vnodes, aff.place_epsilon, aff.keep_slack)
                         if settings.wrapper.balancer == "affinity" else None)
        self.table = RoutingTable(POLICIES[settings.wrapper.balancer], settings.wrapper.cooldown,
                                  RouteRules(settings.wrapper.routes), self.affinity)
        self.plan = ModelPlan(settings.wrapper)
        prefix = settings.wrapper.keys_consul_prefix
        self.keys = KeyRing(load_api_keys(settings), watched=prefix is not None)
        self.key_watch = KeyWatch(settings.consul, prefix, self.keys) if prefix is not None else None
        self.limits = Limiter(settings)
        worker_secret = secret(settings.worker.secret)
        self.hop = Hop(self.table, settings.wrapper, worker_secret)
        self._secret = worker_secret.encode() if worker_secret else None
        self.discovery = Discovery(settings.consul, self.table, settings.wrapper)
        self.created = wire.now()
        self.metrics = WrapperMetrics(self.table, lambda: self.discovery.heard_at, lambda: self.discovery.outage.down,
                                      settings.metrics.server_timing) if settings.metrics.enabled else None
        self.hop.observer = self.metrics
        if self.metrics is not None:  # keys may arrive later (Consul KV): the counters are there from the start
            self.limits.metrics = KeyMetrics(self.metrics.exposition.registry, self.table.known_models.__contains__)
        self.observer = Observer(self.table, self.metrics,
                                 tracing.build_exporter(settings.tracing, "openai-api-wrapper"))
        self.hop.trace_headers = self.observer.attempt_headers
        service = settings.wrapper.gateway_service
        self.gateway = GatewayRegistration(settings, service, *listen) if listen and service else None

    async def _route(self, request: Request, capability: Capability, obs: Observation | None) -> Response:
        """One model request (wrapper/observe.py around it; `obs`: its metrics record, None if they are off)."""
        rid = request_id(request)
        limits = self.settings.limits
        key = self.keys.authenticate(raw_header(request.scope["headers"], b"authorization"))
        form = capability in wire.MULTIPART
        raw = await read_body(request, limits.max_upload_bytes if form else limits.max_body_bytes)
        content_type = request.headers.get("content-type") if form else None  # sent on with its boundary
        model, stream, affinity, body = self._admit(raw, capability, content_type, request)
        self.observer.admitted(request, model, stream, obs)
        if not self.keys.allows(key, model):
            raise model_not_found(model)
        admitted = Admitted(request, rid, capability, model, stream, content_type, affinity, obs)
        # wrapper/limits.py: 429 over a limit, before a worker is chosen; a stream's usage chunk is asked for
        ticket = await self.limits.admit(key, model, raw, stream and capability in wire.USAGE_CHUNK_STREAMS)
        if ticket is not None:
            return await ticket.settle(self._relay(admitted, ticket.body, key, body))
        return await self._relay(admitted, raw, key, body)

    async def _relay(self, admitted: Admitted, raw: bytes, key: ApiKey | None, body: dict | None) -> Response:
        request, rid, capability, model, stream, content_type, affinity, obs = admitted
        if body is not None:
            reroute = Reroute(model, self.plan.chain(model, affinity, lambda m: self.keys.allows(key, m)), body, raw)
            return await self._reroute(request, reroute, capability, stream, affinity, rid)
        if not self.table.serves(model, capability):
            raise unsupported_capability(model, wire.PATHS[capability])
        whole = not stream and capability not in wire.BINARY_ANSWER
        try:
            attempt = await unless_disconnected(request, self.hop.open(
                model, wire.PATHS[capability], raw, rid, whole=whole, capability=capability, content_type=content_type,
                key=affinity))
        except ClientGone:
            log.debug("request %s: client went away; abandoned", rid)
            return Response(status_code=CLIENT_CLOSED)
        # DEBUG, not INFO: a log line per request costs a third of the throughput (docs/performance.md)
        log.debug("request %s: %s %s -> %s %d", rid, capability, model, attempt.instance.id, attempt.status)
        headers = attempt.headers()  # DirectRoutes adds X-Request-ID
        timing = self.metrics.answered(obs) if self.metrics is not None and obs is not None else None
        media_type = attempt.content_type
        response: Response
        if attempt.content is None and not media_type.startswith(JSON):  # an event stream, or audio
            chunks = self.hop.stream(attempt) if media_type.startswith(wire.SSE) else self.hop.relay(attempt)
            response = SSEResponse(chunks, attempt.status, headers, on_close=attempt.close, media_type=media_type)
        else:
            content = attempt.content if attempt.content is not None else await self.hop.read(attempt)
            attempt.close()
            response = Response(content, status_code=attempt.status, media_type=media_type, headers=headers)
        if timing is not None:
            response.raw_headers.append((SERVER_TIMING, timing))
        return response

    def _admit(self, raw: bytes, capability: Capability, content_type: str | None,
               request: Request) -> tuple[str, bool, bytes | None, dict | None]:
        """Check the body (a form's, with its `content_type`, for an upload); return its model, stream flag,
        affinity key (with that balancer) and, for an aliased model or one with fallbacks only (JSON bodies),
        the parsed body. Otherwise the parsed body is dropped on return, so it is not held while the worker
        works (only `raw` is sent on)."""
        if capability in wire.MULTIPART:
            body, model = multipart.admit_form(raw, content_type, capability)
        else:
            body = wire.parse_body(raw, self.settings.limits)
            model = wire.require_routing_fields(body, capability)
        wire.check_fields(body, capability, self.settings.limits)
        key = None
        if self.affinity is not None:
            key = affinity_key(request.headers.get(SESSION_HEADER), body, self.settings.wrapper.affinity.prompt_chars)
        return model, wire.is_stream(body), key, body if model in self.plan and capability not in wire.MULTIPART else None

    async def _reroute(self, request: Request, reroute: Reroute, capability: Capability, stream: bool,
                       key: bytes | None, rid: str) -> Response:
        """`_route` for an aliased model or one with fallbacks: the first target that answers serves, and
        the answer names it (X-Served-Model, and the `model` field: docs/routing.md)."""
        try:
            attempt, target = await unless_disconnected(
                request, reroute.open(self.hop, wire.PATHS[capability], rid, whole=not stream, key=key))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        headers = {**attempt.headers(), SERVED_MODEL_HEADER: target.model}
        name = self.plan.answer_name(target) if attempt.status == 200 else None
        if attempt.content is None and attempt.content_type.startswith(wire.SSE):
            chunks = self.hop.stream(attempt)
            return SSEResponse(chunks if name is None else renamed_stream(chunks, name), attempt.status, headers,
                               on_close=attempt.close)
        content = attempt.content if attempt.content is not None else await self.hop.read(attempt)
        attempt.close()
        return Response(renamed_json(content, name), status_code=attempt.status, media_type=JSON, headers=headers)

    async def models(self, request: Request) -> Response:
        key = self.keys.authenticate(request.headers.get("authorization"))
        entries = []
        for name in self.table.models():
            if self.keys.allows(key, name):
                owner = self.table.instances(name)[0].service
                entries.append(wire.model_entry(name, self.created, owner))
        for name in self.plan.public_names():
            if name in self.table.known_models and self.table.instances(name):
                continue  # a registered model of the same name is listed already
            if self.keys.allows(key, name) and (alias_owner := self._alias_owner(name)) is not None:
                entries.append(wire.model_entry(name, self.created, alias_owner))
        return json_response(wire.model_list(entries))

    def _alias_owner(self, name: str) -> str | None:
        """The service of an alias's first routable model; None if none of its models is routable."""
        return next((inst[0].service for m in self.plan.aliases.get(name, ()) if (inst := self.table.instances(m))),
                    None)

    async def model(self, request: Request, model: str) -> Response:
        key = self.keys.authenticate(request.headers.get("authorization"))
        instances = self.table.instances(model)
        owner = instances[0].service if instances else self._alias_owner(model)
        if owner is None or not self.keys.allows(key, model):
            raise model_not_found(model)
        return json_response(wire.model_entry(model, self.created, owner))

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
        if self.gateway is not None:
            self.gateway.start()
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
            if self.gateway is not None:
                await self.gateway.stop()
            if self.key_watch is not None:
                await self.key_watch.stop()
            await self.limits.close()
            await self.discovery.stop()
            await self.hop.close()
            if self.observer.exporter is not None:
                self.observer.exporter.shutdown()

    def app(self) -> ASGIApp:
        capabilities = [Capability.CHAT, Capability.COMPLETION, Capability.EMBEDDING,
                        *(c for c in Capability if c not in wire.LEGACY_CAPABILITIES)]
        api, asgi = openai_app("openai-api-wrapper", lifespan=self.lifespan,
                               posts=self.observer.endpoints(self._route, capabilities))
        api.add_api_route("/v1/models", self.models, methods=["GET"], response_model=wire.ModelList)
        api.add_api_route("/v1/models/{model:path}", self.model, methods=["GET"], response_model=wire.ModelObject)
        api.add_api_route("/health", self.health, methods=["GET"], response_model=WrapperHealth)
        if self.metrics is not None:
            api.add_api_route("/metrics", self.metrics.endpoint, methods=["GET"], include_in_schema=False)
        page, data = status_endpoints(self)
        api.add_api_route("/status", page, methods=["GET"], include_in_schema=False)
        api.add_api_route("/status.json", data, methods=["GET"], include_in_schema=False)
        add_unsupported_routes(api)
        api.add_api_route("/admin/usage", usage_endpoint(self.keys, self.limits), methods=["GET"])
        return asgi
