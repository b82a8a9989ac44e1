"""What every endpoint of a worker builds on: the Generator, its settings and concurrency limit, the request
checks (the worker secret, the body, the model served), and a proxy Generator's answer relayed as it comes.
worker/app.py adds the OpenAI endpoints on top, worker/media.py and worker/relay.py theirs beside them."""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from common import tracing, wire
from common.errors import InvalidRequest, NotFound, Unauthorized
from common.http import (
    CLIENT_CLOSED,
    ClientGone,
    SSEResponse,
    presents_secret,
    read_body,
    request_id,
    unless_disconnected,
)
from common.settings import Settings
from common.wire import Capability
from generators import Forwarded, Generator, ProxyGenerator

from .answers import Answers
from .concurrency import ConcurrencyLimit
from .metrics import WorkerMetrics
from .responses import Responses

log = logging.getLogger(__name__)


class WorkerBase:
    """Holds the Generator and the settings the endpoints need; one per process (as worker.app.Worker). `service_id` is the
    Consul service id this worker registers under (svc_mgr.entry.service_id)."""

    def __init__(self, generator: Generator, settings: Settings, service_id: str | None = None) -> None:
        self.generator = generator
        self.settings = settings
        self.service_id = service_id
        self.models: frozenset[str] = frozenset()  # set at start-up: a proxy learns its models then
        self.served = 0  # model calls accepted, reported by /health
        self._started = False
        self.answers = Answers(generator)
        self.responses_api = Responses(generator, self.answers)
        self.limit = ConcurrencyLimit(settings.worker.max_concurrency, settings.worker.max_queue)
        self._secret = settings.worker.secret.get_secret_value().encode() if settings.worker.secret else None
        self.metrics = WorkerMetrics(lambda model: model in self.models, lambda: self.limit.waiting
                                     ) if settings.metrics.enabled else None
        self.exporter = tracing.build_exporter(settings.tracing, "openai-api-wrapper-worker")

    # ---- request checks ----------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self._secret is not None and not presents_secret(request, self._secret):
            raise Unauthorized("This worker accepts calls only from its wrapper.", code="invalid_worker_secret")

    async def parse(self, request: Request, capability: Capability) -> tuple[dict[str, Any], str, bytes]:
        self.authorize(request)
        limits = self.settings.limits
        raw = await read_body(request, limits.max_body_bytes)
        body = wire.parse_body(raw, limits)
        model = wire.require_routing_fields(body, capability)
        wire.check_fields(body, capability, limits)
        self.admit(model, capability)
        tracing.note_model(model)
        if self.metrics is not None:
            self.metrics.admit(request, model, wire.is_stream(body))
        log.debug("request %s: %s %s%s", request_id(request), capability, model,
                 " stream" if wire.is_stream(body) else "")
        return body, model, raw

    def admit(self, model: str, capability: Capability) -> None:
        """Refuse a model this worker does not serve, or an endpoint its Generator does not; count the call."""
        if model not in self.models:
            raise NotFound(f"The model '{model}' does not exist on this worker.", param="model",
                           code="model_not_found")
        if not self.generator.supports(capability):
            raise InvalidRequest(f"The model '{model}' does not support {capability} requests.",
                                 param="model", code="unsupported_capability")
        self.served += 1

    # ---- a proxy's answer ----------------------------------------------------------------------

    async def forward(self, request: Request, proxy: ProxyGenerator, capability: Capability,
                       body: dict[str, Any], raw: bytes, content_type: str | None = None) -> Response:
        """A proxy generator answers with its upstream's bytes: a JSON answer once it is whole, a stream
        chunk by chunk. Until then a client that hangs up cancels the upstream call, and so frees its
        concurrency slot, at once (the wrapper might otherwise send the same prompt elsewhere while this
        one still runs); after that SSEResponse watches for it."""
        try:
            forwarded, release = await unless_disconnected(
                request, self._upstream(proxy, capability, body, raw, content_type))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if isinstance(forwarded.body, bytes):
            return Response(forwarded.body, status_code=forwarded.status, media_type=forwarded.content_type)
        return SSEResponse(forwarded.body, forwarded.status, on_close=release, media_type=forwarded.content_type)

    async def _upstream(self, proxy: ProxyGenerator, capability: Capability, body: dict[str, Any],
                        raw: bytes, content_type: str | None) -> tuple[Forwarded, Callable[[], None]]:
        """Take a slot and call the upstream up to its whole JSON answer or a stream's first chunk. The slot
        is given back here on any failure or cancellation, and once a JSON answer is whole; a stream's
        when it ends (the release function returned, safe to call again)."""
        release = await self.limit.hold()
        try:
            forwarded = await proxy.forward(capability, body, raw, content_type)
            if isinstance(forwarded.body, bytes):
                release()
            else:
                forwarded = replace(forwarded, body=await started(then(forwarded.body, release)))
        except BaseException:
            release()
            raise
        return forwarded, release


async def started(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """Run `chunks` up to its first item now, so errors before it surface as plain HTTP errors and
    its cleanup (a started generator is closed when dropped) is guaranteed, then hand it on."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""

    async def rest() -> AsyncGenerator[bytes, None]:
        async with aclosing(chunks):
            yield first
            async for chunk in chunks:
                yield chunk

    return rest()


async def then(chunks: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> AsyncGenerator[bytes, None]:
    """`chunks` as they are, then `on_close()` however they end."""
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        on_close()
