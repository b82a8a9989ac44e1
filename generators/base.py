"""The Generator contract: what a model adapter implements, and what the worker calls.

A subclass lists its `models` and implements any of:

    chat(request) -> str | Output                 chat_stream(request) -> iterator of str | Delta
    completion(request) -> str | Output           completion_stream(request) -> iterator of str | Delta
    embed(request) -> list of vectors | Embeddings

and the media methods (docs/generators.md has an example of each):

    speech(request) -> bytes | iterator of bytes          /v1/audio/speech: audio in
                                                          request.get("response_format", "mp3"), streamed
                                                          through as produced
    transcribe(request, audio) -> str | dict              /v1/audio/transcriptions and /translations
    image(request, images) -> list of PNG bytes           /v1/images/generations (images == []) and /edits
    moderate(request) -> list of dict                     /v1/moderations: per input {"flagged",
                                                          "categories", "category_scores"}
    rerank(request) -> list of float                      /v1/rerank and /v1/score: a score per document

`request` is the client's JSON body as a dict, every field untouched. Each method may be plain or
`async`; a stream may be a plain or an async iterator. Plain code runs in a worker thread, so it may
block. Implement either form of a capability and the worker derives the other. Bad input is refused by
raising `common.errors.InvalidRequest(message, param=..., code=...)`.

For the multipart endpoints `request` is the form's text fields (`stream`, `temperature` and `n`
converted to their types) plus `"filename"` (the upload's); `transcribe` also gets `"task"`:
"transcribe" or "translate", from the endpoint, and returns the text or a dict with "text" and
optionally "language", "duration" and "segments" (each {"start", "end", "text"}), which the worker
shapes as json, text, srt, vtt or verbose_json. `rerank` gets `query` and `documents` (as strings);
the worker sorts and cuts (`top_n`) for /v1/rerank and pairs texts for /v1/score.

The worker calls only `supports`, `answer`, `stream`, `embeddings`, `count_tokens`, `startup`,
`shutdown` and, for the media endpoints, `speech_chunks`, `transcription`, `images`, `moderations` and
`relevance`; a `ProxyGenerator` (one that relays an upstream's bytes) is called through `forward` instead.
"""
from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio.to_thread

from common.wire import Capability

# The methods that serve each capability: (whole answer, stream). Embeddings have no stream.
_METHODS: dict[Capability, tuple[str, str | None]] = {
    Capability.CHAT: ("chat", "chat_stream"),
    Capability.COMPLETION: ("completion", "completion_stream"),
    Capability.EMBEDDING: ("embed", None),
    Capability.SPEECH: ("speech", None),
    Capability.TRANSCRIPTION: ("transcribe", None),
    Capability.TRANSLATION: ("transcribe", None),
    Capability.IMAGE_GENERATION: ("image", None),
    Capability.IMAGE_EDIT: ("image", None),
    Capability.MODERATION: ("moderate", None),
    Capability.RERANK: ("rerank", None),
    Capability.SCORE: ("rerank", None),
}

# Capabilities the worker serves by translation into another one (worker/responses.py)
_SERVED_AS = {Capability.RESPONSES: Capability.CHAT, Capability.RESPONSES_INPUT_TOKENS: Capability.CHAT}


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0


@dataclass
class ToolCall:
    """A whole tool call in a non-streamed answer; `arguments` is a JSON string."""

    name: str
    arguments: str
    id: str = ""


@dataclass
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams them: `index` says which call it extends;
    `id` and `name` come with a call's first piece, `arguments` arrives in fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """The richer form of a streamed piece: text, tool-call pieces, and optionally how the answer ended."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


# Yielded (this very object) by a stream that has checked its request and begun work that takes a while
# before its first token (a model's prompt processing): the worker then sends the answer's HTTP head at
# once, so whatever is in front (the wrapper, the client) gets ready during that work instead of after the
# first token. From then on a failure ends the stream with an error event, not an HTTP status (the wrapper
# still fails the request over to another instance until the first token has gone to the client).
ACCEPTED = Delta()


@dataclass
class Output:
    """The richer form of a whole answer."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    usage: Usage | None = None


@dataclass
class Embeddings:
    vectors: list[Sequence[float]]
    usage: Usage | None = None


class Generator:
    """Base class for model adapters. See the module docstring for the methods a subclass may implement."""

    models: Sequence[str] = ()  # the class lists its defaults; an instance holds what it serves
    service_name: ClassVar[str | None] = None  # default: the class name in kebab case
    owned_by: ClassVar[str] = "openai-api-wrapper"

    def __init__(self, models: Sequence[str] | None = None) -> None:
        self.models: tuple[str, ...] = tuple(models or type(self).models)
        if not self.models:
            raise ValueError(f"{type(self).__name__} serves no model: set `models` on the class or pass --models")

    # ---- optional hooks ----------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this generator's own command-line options; they reach __init__ as keyword arguments."""

    @classmethod
    def default_service_name(cls) -> str:
        if cls.service_name:
            return cls.service_name
        return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()

    async def startup(self) -> None:
        """Called once in the worker's event loop before it serves; open clients or load models here."""

    async def shutdown(self) -> None:
        """Called once when the worker stops."""

    def count_tokens(self, text: str) -> int:
        """Used for `usage` when a method does not report it. Override with a real tokenizer."""
        return len(text.split())

    def stats(self) -> dict[str, Any] | None:
        """Counters of the generator's own, shown in the worker's /health to a caller with the secret."""
        return None

    # ---- what the worker calls ---------------------------------------------------------------

    def _method(self, name: str | None) -> Callable[..., Any] | None:
        method = getattr(self, name, None) if name else None
        return method if callable(method) else None

    def supports(self, capability: Capability) -> bool:
        return any(self._method(name) for name in _METHODS.get(_SERVED_AS.get(capability, capability), ()))

    async def answer(self, capability: Capability, request: dict[str, Any]) -> Output:
        """One whole answer: the whole-answer method, else the stream joined."""
        whole_name, stream_name = _METHODS[capability]
        whole = self._method(whole_name)
        if whole is not None:
            return _as_output(await _call(whole, request))
        streaming = self._method(stream_name)
        if streaming is None:
            raise NotImplementedError(f"{type(self).__name__} does not serve {capability}")
        return await _join(_deltas(streaming, request))

    async def stream(self, capability: Capability, request: dict[str, Any]) -> AsyncGenerator[Delta, None]:
        """Deltas of one answer: the stream method, else the whole answer as one delta. Closing this
        iterator stops the Generator."""
        whole_name, stream_name = _METHODS[capability]
        streaming = self._method(stream_name)
        if streaming is not None:
            async for delta in _deltas(streaming, request):
                yield delta
            return
        whole = self._method(whole_name)
        if whole is None:
            raise NotImplementedError(f"{type(self).__name__} does not serve {capability}")
        yield _output_as_delta(_as_output(await _call(whole, request)))

    async def embeddings(self, request: dict[str, Any], inputs: list[Any]) -> Embeddings:
        """`inputs` holds strings, or token arrays where the client sent tokens."""
        embed = self._method("embed")
        if embed is None:
            raise NotImplementedError(f"{type(self).__name__} does not serve embeddings")
        result = await _call(embed, {**request, "input": inputs})
        if isinstance(result, Embeddings):
            return result
        return Embeddings(vectors=list(result))

    # ---- the media methods, as the worker calls them -------------------------------------------

    def _media(self, name: str) -> Callable[..., Any]:
        method = self._method(name)
        if method is None:
            raise NotImplementedError(f"{type(self).__name__} does not implement {name}")
        return method

    async def speech_chunks(self, request: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """The audio of `speech`, whole or streamed, as chunks. Closing this iterator stops the Generator."""
        speech = self._media("speech")
        source = speech(request) if inspect.isasyncgenfunction(speech) else await _call(speech, request)
        if isinstance(source, (bytes, bytearray, memoryview)):
            yield bytes(source)
        elif hasattr(source, "__aiter__"):
            agen = source.__aiter__()
            try:
                async for chunk in agen:
                    yield bytes(chunk)
            finally:
                if hasattr(agen, "aclose"):
                    await agen.aclose()
        else:
            async for chunk in _iterate_in_thread(iter(source)):
                yield bytes(chunk)

    async def transcription(self, request: dict[str, Any], audio: bytes) -> str | dict[str, Any]:
        return await _call(self._media("transcribe"), request, audio)

    async def images(self, request: dict[str, Any], images: list[bytes]) -> list[bytes]:
        pngs = await _call(self._media("image"), request, images)
        return [bytes(png) for png in pngs]

    async def moderations(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return list(await _call(self._media("moderate"), request))

    async def relevance(self, request: dict[str, Any]) -> list[float]:
        """`rerank`'s scores; one per document, checked."""
        scores = [float(s) for s in await _call(self._media("rerank"), request)]
        if len(scores) != len(request["documents"]):
            raise RuntimeError(f"{type(self).__name__}.rerank returned {len(scores)} scores "
                               f"for {len(request['documents'])} documents")
        return scores


@dataclass
class Forwarded:
    """An upstream's answer, to relay as it is: a whole body (JSON), read before anything is sent so that a
    failure while reading it is still a plain HTTP error, or a stream's chunks as they arrive."""

    status: int
    content_type: str
    body: bytes | AsyncGenerator[bytes, None]


class ProxyGenerator(Generator):
    """A Generator that relays another OpenAI-compatible API: the worker hands it the client's raw
    request and relays the upstream's bytes, instead of shaping answers itself."""

    async def forward(self, capability: Capability, request: dict[str, Any], raw: bytes,
                      content_type: str | None = None) -> Forwarded:
        """`content_type` is a multipart form's (with its boundary); None for a JSON body."""
        raise NotImplementedError


async def _deltas(streaming: Callable[..., Any], request: dict[str, Any]) -> AsyncGenerator[Delta, None]:
    """The pieces of a plain or async stream method, as Deltas; a blocking iterator is pulled off the loop."""
    if inspect.isasyncgenfunction(streaming):
        source = streaming(request)
    else:
        source = await _call(streaming, request)
    if hasattr(source, "__aiter__"):
        agen = source.__aiter__()
        try:
            async for piece in agen:
                yield _as_delta(piece)
        finally:
            if hasattr(agen, "aclose"):
                await agen.aclose()
    else:
        async for piece in _iterate_in_thread(iter(source)):
            yield _as_delta(piece)


async def _call(fn: Callable[..., Any], request: dict[str, Any], *more: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(request, *more)
    return await anyio.to_thread.run_sync(fn, request, *more)


_END = object()


async def _iterate_in_thread(it: Any) -> AsyncGenerator[Any, None]:
    """Pull a blocking iterator one item at a time off the event loop; stop pulling when closed."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, it, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


def _as_output(result: Any) -> Output:
    if isinstance(result, Output):
        return result
    if isinstance(result, str):
        return Output(text=result)
    raise TypeError(f"a Generator must return str or Output, not {type(result).__name__}")


def _as_delta(piece: Any) -> Delta:
    if isinstance(piece, Delta):
        return piece
    if isinstance(piece, str):
        return Delta(content=piece)
    raise TypeError(f"a Generator stream must yield str or Delta, not {type(piece).__name__}")


def _output_as_delta(out: Output) -> Delta:
    calls = [ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments) for i, c in enumerate(out.tool_calls)]
    return Delta(content=out.text, tool_calls=calls or None, finish_reason=out.finish_reason, usage=out.usage)


async def _join(deltas: AsyncGenerator[Delta, None]) -> Output:
    text: list[str] = []
    calls: dict[int, ToolCall] = {}
    out = Output()
    async for d in deltas:
        if d.content:
            text.append(d.content)
        for piece in d.tool_calls or ():
            call = calls.setdefault(piece.index, ToolCall(name="", arguments="", id=""))
            call.id = piece.id or call.id
            call.name = piece.name or call.name
            call.arguments += piece.arguments
        out.finish_reason = d.finish_reason or out.finish_reason
        out.usage = d.usage or out.usage
    out.text = "".join(text) if text or not calls else None
    out.tool_calls = [calls[i] for i in sorted(calls)]
    return out
