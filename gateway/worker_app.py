"""The worker's HTTP app: OpenAI endpoints in front of one Generator."""
from __future__ import annotations

import contextlib
import hmac
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from generators import Generator
from generators.base import Delta, Embeddings, Output

from . import wire
from .config import Settings
from .errors import InvalidRequest, NotFound, Unauthorized, sse_error_event
from .http import CLIENT_CLOSED, ClientGone, RelayStream, json_response, openai_app, read_body, unless_disconnected
from .limits import ConcurrencyLimit

log = logging.getLogger(__name__)

SECRET_HEADER = "x-worker-secret"


class Worker:
    """Holds the Generator and the settings the endpoints need; one per process."""

    def __init__(self, generator: Generator, settings: Settings) -> None:
        self.generator = generator
        self.settings = settings
        self.models: frozenset[str] = frozenset()  # set at start-up: a proxy learns its models then
        self.forwards = callable(getattr(generator, "forward", None))
        self.served = 0  # model calls accepted, reported by /health
        self._started = False
        self.limit = ConcurrencyLimit(settings.worker.max_concurrency, settings.worker.max_queue)
        self._secret = settings.worker.secret.get_secret_value().encode() if settings.worker.secret else None

    # ---- request checks ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self._secret is None:
            return
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            raise Unauthorized("This worker accepts calls only from its wrapper.", code="invalid_worker_secret")

    async def _parse(self, request: Request, kind: str) -> tuple[dict[str, Any], str, bytes]:
        self._authorize(request)
        raw = await read_body(request, self.settings.limits.max_body_bytes)
        body = wire.parse_body(raw)
        model = wire.require_routing_fields(body, kind)
        wire.check_fields(body, kind, self.settings.limits)
        if model not in self.models:
            raise NotFound(f"The model '{model}' does not exist on this worker.", param="model",
                           code="model_not_found")
        if not self.generator.supports(kind):
            raise InvalidRequest(f"The model '{model}' does not support {kind} requests.",
                                 param="model", code="unsupported_capability")
        self.served += 1
        log.debug("request %s: %s %s%s", request.headers.get("x-request-id", "-"), kind, model,
                 " stream" if wire.is_stream(body) else "")
        return body, model, raw

    # ---- endpoints ---------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completion(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def _generate(self, request: Request, kind: str) -> Response:
        body, model, raw = await self._parse(request, kind)
        if self.forwards:
            return await self._forward(kind, body, raw)
        if wire.is_stream(body):
            events = self._events(kind, body, model, request.headers.get("x-request-id", "-"))
            # a failure before the first event is still a plain HTTP error
            return EventSourceResponse(await _started(events), sep="\n")
        try:
            answers = await unless_disconnected(request, self._answers(kind, body))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(self._whole(kind, body, model, answers))

    async def _embed(self, body: dict[str, Any], inputs: list[Any]) -> Embeddings:
        async with self.limit:
            return await self.generator.embeddings(body, inputs)

    async def _answers(self, kind: str, body: dict[str, Any]) -> list[Output]:
        async with self.limit:
            return [await self.generator.answer(kind, body) for _ in range(wire.choice_count(body))]

    async def _forward(self, kind: str, body: dict[str, Any], raw: bytes) -> Response:
        """A proxy generator answers with its upstream's bytes, relayed as they come."""
        release = await self.limit.hold()
        try:
            forwarded = await self.generator.forward(kind, body, raw)  # type: ignore[attr-defined]
            chunks = await _started(_then(forwarded.body, release))
        except BaseException:
            release()
            raise
        if forwarded.content_type.startswith("text/event-stream"):
            return RelayStream(chunks, forwarded.status, {}, on_close=release)
        return Response(b"".join([c async for c in chunks]), status_code=forwarded.status,
                        media_type=forwarded.content_type)

    async def embeddings(self, request: Request) -> Response:
        body, model, raw = await self._parse(request, "embedding")
        if self.forwards:
            return await self._forward("embedding", body, raw)
        inputs = wire.embedding_inputs(body["input"])
        try:
            result = await unless_disconnected(request, self._embed(body, inputs))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if len(result.vectors) != len(inputs):
            raise RuntimeError(f"{type(self.generator).__name__}.embed returned {len(result.vectors)} vectors "
                               f"for {len(inputs)} inputs")
        tokens = result.usage.prompt_tokens if result.usage else sum(map(self._count, inputs))
        return json_response(wire.embedding_list(model, result.vectors, body.get("encoding_format") or "float", tokens))

    async def models_list(self, request: Request) -> Response:
        self._authorize(request)
        created = wire.now()
        owner = self.generator.owned_by
        return json_response(wire.model_list([wire.model_entry(m, created, owner) for m in self.generator.models]))

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "models": list(self.generator.models), "served": self.served})

    # ---- shapes ------------------------------------------------------------------------------

    def _count(self, text_or_tokens: str | list[int]) -> int:
        if isinstance(text_or_tokens, list):
            return len(text_or_tokens)
        return self.generator.count_tokens(text_or_tokens)

    def _prompt_tokens(self, kind: str, body: dict[str, Any]) -> int:
        if kind == "chat":
            return sum(self.generator.count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        return sum(map(self._count, wire.embedding_inputs(body["prompt"])))

    def _usage(self, kind: str, body: dict[str, Any], outs: list[Output]) -> dict[str, int]:
        prompt = next((o.usage.prompt_tokens for o in outs if o.usage), None)
        if prompt is None:
            prompt = self._prompt_tokens(kind, body)
        completion = sum(o.usage.completion_tokens if o.usage else self.generator.count_tokens(o.text or "")
                         for o in outs)
        return wire.usage(prompt, completion)

    def _whole(self, kind: str, body: dict[str, Any], model: str, outs: list[Output]) -> dict:
        usage = self._usage(kind, body, outs)
        if kind == "chat":
            choices = [wire.chat_choice(i, wire.chat_message(o.text, _tool_calls(o) or None), _finish(o))
                       for i, o in enumerate(outs)]
            return wire.chat_completion(wire.new_id("chatcmpl"), wire.now(), model, choices, usage)
        choices = [wire.text_choice(i, o.text or "", _finish(o)) for i, o in enumerate(outs)]
        return wire.text_completion(wire.new_id("cmpl"), wire.now(), model, choices, usage)

    async def _events(self, kind: str, body: dict[str, Any], model: str, request_id: str) -> AsyncIterator[bytes]:
        """SSE events for a whole stream: one id, exactly one finish_reason per choice, [DONE] last."""
        shape = _StreamShape(kind, model)
        started = False
        try:
            async with self.limit:  # held by the stream itself, so it is freed however the stream ends
                outs: list[Output] = []
                for index in range(wire.choice_count(body)):
                    async with aclosing(self._choice_events(shape, index, kind, body, outs)) as events:
                        async for event in events:
                            started = True
                            yield event
                if wire.include_usage(body):
                    yield shape.usage_chunk(self._usage(kind, body, outs))
                yield wire.DONE_EVENT
        except Exception as exc:
            if not started:
                raise
            # the status line is gone: end with an error event and no [DONE], so the client sees the cut
            log.error("request %s: generator failed mid-stream", request_id, exc_info=exc)
            yield sse_error_event(exc)

    async def _choice_events(self, shape: _StreamShape, index: int, kind: str, body: dict[str, Any],
                             outs: list[Output]) -> AsyncIterator[bytes]:
        out = Output()
        text: list[str] = []
        first = True
        async with aclosing(self.generator.stream(kind, body)) as deltas:
            async for d in deltas:
                out.finish_reason = d.finish_reason or out.finish_reason
                out.usage = d.usage or out.usage
                if not d.content and not d.tool_calls:
                    continue
                if d.tool_calls:
                    out.finish_reason = out.finish_reason or "tool_calls"
                text.append(d.content or "")
                yield shape.chunk(index, d, first)
                first = False
        out.text = "".join(text)
        outs.append(out)
        yield shape.final_chunk(index, out.finish_reason or "stop", first)

    def app(self) -> ASGIApp:
        return openai_app(
            posts={"/v1/chat/completions": self.chat, "/v1/completions": self.completion,
                   "/v1/embeddings": self.embeddings},
            gets={"/v1/models": self.models_list, "/health": self.health},
            lifespan=self._lifespan,
        )

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

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        # the entry script starts the Worker before binding; this covers the app served some other way
        await self.start()
        try:
            yield
        finally:
            await self.stop()


class _StreamShape:
    """The chunks of one stream: chat.completion.chunk or text_completion, one id and timestamp."""

    def __init__(self, kind: str, model: str) -> None:
        self.chat = kind == "chat"
        self.id = wire.new_id("chatcmpl" if self.chat else "cmpl")
        self.created = wire.now()
        self.model = model

    def _event(self, choices: list[dict], usage: dict | None = None) -> bytes:
        build = wire.chat_chunk if self.chat else wire.text_completion
        return wire.sse_event(build(self.id, self.created, self.model, choices, usage))

    def chunk(self, index: int, d: Delta, first: bool) -> bytes:
        if self.chat:
            return self._event([wire.chat_chunk_choice(index, _chat_delta(d, first), None)])
        return self._event([wire.text_choice(index, d.content or "", None)])

    def final_chunk(self, index: int, finish_reason: str, nothing_sent: bool) -> bytes:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if nothing_sent else {}
            return self._event([wire.chat_chunk_choice(index, delta, finish_reason)])
        return self._event([wire.text_choice(index, "", finish_reason)])

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        return self._event([], usage)


async def _started(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Run `chunks` up to its first item now, so errors before it surface as plain HTTP errors and
    its cleanup (a started generator is closed when dropped) is guaranteed, then hand it on."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""

    async def rest() -> AsyncIterator[bytes]:
        async with aclosing(chunks):
            yield first
            async for chunk in chunks:
                yield chunk

    return rest()


async def _then(chunks: AsyncIterator[bytes], on_close: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        on_close()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _chat_delta(d: Delta, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if d.content:
        delta["content"] = d.content
    if d.tool_calls:
        delta["tool_calls"] = [_tool_call_delta(t) for t in d.tool_calls]
    return delta


def _tool_call_delta(t) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": t.index}
    if t.id:
        piece["id"] = t.id
        piece["type"] = "function"
    function: dict[str, Any] = {"arguments": t.arguments}
    if t.name:
        function["name"] = t.name
    piece["function"] = function
    return piece


def _tool_calls(out: Output) -> list[dict[str, Any]]:
    return [{"id": c.id or wire.new_id("call"), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in out.tool_calls]


def _finish(out: Output) -> str:
    return out.finish_reason or ("tool_calls" if out.tool_calls else "stop")
