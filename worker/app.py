"""The worker's HTTP app: OpenAI endpoints in front of one Generator."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from common import tracing, wire
from common.errors import InvalidRequest, NotFound, Unauthorized, Unavailable
from common.http import (
    CLIENT_CLOSED,
    ClientGone,
    SSEResponse,
    json_response,
    openai_app,
    presents_secret,
    read_body,
    request_id,
    unless_disconnected,
)
from common.settings import Settings
from common.wire import Capability
from generators import Embeddings, Forwarded, Generator, Output, ProxyGenerator

from .answers import Answers
from .concurrency import ConcurrencyLimit
from .metrics import WorkerMetrics
from .observe import observed
from .relay import relay_endpoints
from .responses import Responses

log = logging.getLogger(__name__)


class WorkerHealth(BaseModel):
    status: str
    models: list[str] | None = None  # these two only for a caller with the worker secret
    served: int | None = None  # model calls accepted
    generator: dict[str, Any] | None = None  # the Generator's own counters (Generator.stats), if it keeps any


class Worker:
    """Holds the Generator and the settings the endpoints need; one per process. `service_id` is the
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

    def _authorize(self, request: Request) -> None:
        if self._secret is not None and not presents_secret(request, self._secret):
            raise Unauthorized("This worker accepts calls only from its wrapper.", code="invalid_worker_secret")

    async def _parse(self, request: Request, capability: Capability) -> tuple[dict[str, Any], str, bytes]:
        self._authorize(request)
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

    # ---- endpoints ---------------------------------------------------------------------------

    async def _generate(self, request: Request, capability: Capability) -> Response:
        body, model, raw = await self._parse(request, capability)
        if isinstance(self.generator, ProxyGenerator):
            return await self._forward(request, self.generator, capability, body, raw)
        if wire.is_stream(body):
            events = self.answers.events(capability, body, model, request_id(request), self.limit)
            # a failure before the first event is still a plain HTTP error
            return SSEResponse(await _started(events))
        try:
            answers = await unless_disconnected(request, self._answers(capability, body))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(self.answers.whole(capability, body, model, answers))

    async def _embed(self, body: dict[str, Any], inputs: list[Any]) -> Embeddings:
        async with self.limit:
            return await self.generator.embeddings(body, inputs)

    async def _answers(self, capability: Capability, body: dict[str, Any]) -> list[Output]:
        async with self.limit:
            return [await self.generator.answer(capability, body) for _ in range(wire.choice_count(body))]

    async def _forward(self, request: Request, proxy: ProxyGenerator, capability: Capability,
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
                forwarded = replace(forwarded, body=await _started(_then(forwarded.body, release)))
        except BaseException:
            release()
            raise
        return forwarded, release

    async def _embeddings(self, request: Request, capability: Capability) -> Response:
        body, model, raw = await self._parse(request, Capability.EMBEDDING)
        if isinstance(self.generator, ProxyGenerator):
            return await self._forward(request, self.generator, Capability.EMBEDDING, body, raw)
        inputs = wire.embedding_inputs(body["input"])
        try:
            result = await unless_disconnected(request, self._embed(body, inputs))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if len(result.vectors) != len(inputs):
            raise RuntimeError(f"{type(self.generator).__name__}.embed returned {len(result.vectors)} vectors "
                               f"for {len(inputs)} inputs")
        tokens = result.usage.prompt_tokens if result.usage else sum(map(self.answers.count, inputs))
        return json_response(wire.embedding_list(model, result.vectors, body.get("encoding_format") or "float", tokens))

    async def responses(self, request: Request) -> Response:
        """/v1/responses, by translation to chat (worker/responses.py); a proxy relays it as it is."""
        body, model, raw = await self._parse(request, Capability.RESPONSES)
        if isinstance(self.generator, ProxyGenerator):
            return await self._forward(request, self.generator, Capability.RESPONSES, body, raw)
        chat = self.responses_api.translate(body)
        if wire.is_stream(body):
            return SSEResponse(await _started(self.responses_api.events(body, chat, request_id(request), self.limit)))
        try:
            answers = await unless_disconnected(request, self._answers(Capability.CHAT, chat))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(self.responses_api.whole(body, chat, answers[0]))

    async def responses_input_tokens(self, request: Request) -> Response:
        body, model, raw = await self._parse(request, Capability.RESPONSES_INPUT_TOKENS)
        if isinstance(self.generator, ProxyGenerator):
            return await self._forward(request, self.generator, Capability.RESPONSES_INPUT_TOKENS, body, raw)
        return json_response(self.responses_api.input_tokens(body))

    async def models_list(self, request: Request) -> Response:
        self._authorize(request)
        created = wire.now()
        owner = self.generator.owned_by
        return json_response(wire.model_list([wire.model_entry(m, created, owner) for m in self.generator.models]))

    async def health(self, request: Request) -> Response:
        """Liveness for Consul's check. With `?id=SERVICE_ID` (as registered), only the worker registered
        under that id is healthy: a stale registration whose port another worker now holds goes critical.
        What the worker serves is shown only to a caller with the secret."""
        asked = request.query_params.get("id")
        if asked is not None and asked != self.service_id:
            raise Unavailable("This worker is not the service instance the health check asks for.",
                              code="wrong_instance")
        if not presents_secret(request, self._secret):
            return json_response({"status": "ok"})
        health: dict[str, Any] = {"status": "ok", "models": list(self.generator.models), "served": self.served}
        if (stats := self.generator.stats()) is not None:
            health["generator"] = stats
        return json_response(health)

    def app(self) -> ASGIApp:
        from .media import MediaEndpoints  # it builds on this module

        api, asgi = openai_app("openai-api-wrapper worker", lifespan=self._lifespan, posts={
            wire.PATHS[Capability.CHAT]: observed(self._generate, Capability.CHAT, self.metrics, self.exporter),
            wire.PATHS[Capability.COMPLETION]: observed(self._generate, Capability.COMPLETION, self.metrics,
                                                        self.exporter),
            wire.PATHS[Capability.EMBEDDING]: observed(self._embeddings, Capability.EMBEDDING, self.metrics,
                                                       self.exporter),
            wire.PATHS[Capability.RESPONSES]: self.responses,
            wire.PATHS[Capability.RESPONSES_INPUT_TOKENS]: self.responses_input_tokens,
            **MediaEndpoints(self).routes(),
            **relay_endpoints(self)})  # a proxy relays every capability, /v1/responses included
        api.add_api_route("/v1/models", self.models_list, methods=["GET"], response_model=wire.ModelList)
        api.add_api_route("/health", self.health, methods=["GET"], response_model=WorkerHealth)
        if self.metrics is not None:
            api.add_api_route("/metrics", self.metrics.endpoint, methods=["GET"], include_in_schema=False)
        return asgi

    async def start(self) -> None:
        """Start the Generator (a proxy learns its models here) before requests arrive; once."""
        if not self._started:
            self._started = True
            await self.generator.startup()
            self.models = frozenset(self.generator.models)

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.generator.shutdown()
        if self.exporter is not None:
            self.exporter.shutdown()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncGenerator[None, None]:
        # the entry script starts the Worker before binding; this covers the app served some other way
        await self.start()
        try:
            yield
        finally:
            await self.stop()


async def _started(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
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


async def _then(chunks: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> AsyncGenerator[bytes, None]:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        on_close()
