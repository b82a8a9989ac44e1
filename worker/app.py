"""The worker's HTTP app: OpenAI endpoints in front of one Generator."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from common import wire
from common.errors import Unavailable
from common.http import (
    CLIENT_CLOSED,
    ClientGone,
    SSEResponse,
    json_response,
    openai_app,
    presents_secret,
    request_id,
    unless_disconnected,
)
from common.wire import Capability
from generators import Embeddings, Output, ProxyGenerator

from .base import WorkerBase, started
from .media import MediaEndpoints
from .observe import observed
from .relay import relay_endpoints


class WorkerHealth(BaseModel):
    status: str
    models: list[str] | None = None  # these two only for a caller with the worker secret
    served: int | None = None  # model calls accepted
    generator: dict[str, Any] | None = None  # the Generator's own counters (Generator.stats), if it keeps any


class Worker(WorkerBase):
    """The OpenAI endpoints and the life cycle of a worker, on WorkerBase's checks and relaying."""

    # ---- endpoints ---------------------------------------------------------------------------

    async def _generate(self, request: Request, capability: Capability) -> Response:
        body, model, raw = await self.parse(request, capability)
        if isinstance(self.generator, ProxyGenerator):
            return await self.forward(request, self.generator, capability, body, raw)
        if wire.is_stream(body):
            events = self.answers.events(capability, body, model, request_id(request), self.limit)
            # a failure before the first event is still a plain HTTP error
            return SSEResponse(await started(events))
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

    async def _embeddings(self, request: Request, capability: Capability) -> Response:
        body, model, raw = await self.parse(request, Capability.EMBEDDING)
        if isinstance(self.generator, ProxyGenerator):
            return await self.forward(request, self.generator, Capability.EMBEDDING, body, raw)
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
        body, model, raw = await self.parse(request, Capability.RESPONSES)
        if isinstance(self.generator, ProxyGenerator):
            return await self.forward(request, self.generator, Capability.RESPONSES, body, raw)
        chat = self.responses_api.translate(body)
        if wire.is_stream(body):
            return SSEResponse(await started(self.responses_api.events(body, chat, request_id(request), self.limit)))
        try:
            answers = await unless_disconnected(request, self._answers(Capability.CHAT, chat))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(self.responses_api.whole(body, chat, answers[0]))

    async def responses_input_tokens(self, request: Request) -> Response:
        body, model, raw = await self.parse(request, Capability.RESPONSES_INPUT_TOKENS)
        if isinstance(self.generator, ProxyGenerator):
            return await self.forward(request, self.generator, Capability.RESPONSES_INPUT_TOKENS, body, raw)
        return json_response(self.responses_api.input_tokens(body))

    async def models_list(self, request: Request) -> Response:
        self.authorize(request)
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
