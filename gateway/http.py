"""Starlette glue shared by the worker and the wrapper: JSON responses, errors, bounded bodies."""
from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import wire
from .errors import InvalidRequest, OpenAIError, error_json, error_status

log = logging.getLogger(__name__)

JSON = "application/json"
T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's status for a client that went away; never reaches the client


class ClientGone(Exception):
    pass


WATCH_AFTER = 0.05  # seconds; quicker answers never pay for a watcher task


async def unless_disconnected(request: Request | Receive, work: Awaitable[T]) -> T:
    """Await `work`, abandoning it (and so closing the hop to the worker) as soon as the client goes away.
    The watch starts only once `work` has run WATCH_AFTER seconds; a disconnect before that is still seen
    then, since the server keeps it for the next receive()."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    receive = request.receive if isinstance(request, Request) else request
    gone = False
    watcher: asyncio.Task | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class RelayStream(Response):
    """Streams chunks to the client as they come, and stops pulling them (closing their source) as soon
    as the client goes away. Lighter than StreamingResponse: no task group, one watcher at most."""

    def __init__(self, chunks: AsyncIterator[bytes], status_code: int, headers: dict[str, str],
                 on_close: Callable[[], None], media_type: str = "text/event-stream") -> None:
        self.chunks = chunks
        self.on_close = on_close  # runs however the response ends, even if `chunks` never started
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await unless_disconnected(receive, self._pump(send))
        except ClientGone:
            pass
        finally:
            self.on_close()

    async def _pump(self, send: Send) -> None:
        async with aclosing(self.chunks) as chunks:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(wire.dumps(obj), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: BaseException) -> Response:
    headers = exc.headers if isinstance(exc, OpenAIError) else None
    return Response(error_json(exc), status_code=error_status(exc), media_type=JSON, headers=headers)


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            exc = OpenAIError(f"Unknown request URL: {request.method} {request.url.path}.",
                              status=404, type="invalid_request_error", code="unknown_url")
        elif exc.status_code == 405:
            exc = OpenAIError(f"Method {request.method} is not allowed for {request.url.path}.",
                              status=405, type="invalid_request_error", code="method_not_allowed",
                              headers=dict(exc.headers or {}))  # Starlette's `Allow` header
        else:
            exc = OpenAIError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    elif not isinstance(exc, OpenAIError):
        log.error("request %s: unexpected error", request.headers.get("x-request-id", "-"), exc_info=exc)
    return error_response(exc)


EXCEPTION_HANDLERS = {HTTPException: _handle, OpenAIError: _handle, Exception: _handle}

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI: a few hot POST endpoints answered without Starlette's middleware stack and route matching
    (a tenth of the wrapper's CPU per request); everything else, lifespan included, goes to `app`.
    Failures become OpenAI errors through the same handler as in the app."""

    def __init__(self, app: ASGIApp, endpoints: dict[str, Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await _handle(request, exc)
        await response(scope, receive, send)


def openai_app(posts: dict[str, Endpoint], gets: dict[str, Endpoint], lifespan: Any) -> ASGIApp:
    """The app both servers use: hot POST endpoints served directly, the rest by Starlette, every
    error (404/405 on unknown routes included) OpenAI-shaped."""
    app = Starlette(
        routes=[*(Route(p, e, methods=["POST"]) for p, e in posts.items()),
                *(Route(p, e, methods=["GET"]) for p, e in gets.items())],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    return DirectRoutes(app, posts)


DRAIN_FACTOR = 4  # an oversize body up to this many times the limit is read and dropped, so the
                  # client gets to read the 413 instead of a reset connection


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 for one larger than `limit` bytes, which is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise InvalidRequest("Content-Length is not a number.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            chunks.clear()
            if size > limit * DRAIN_FACTOR:
                break
            continue
        chunks.append(chunk)
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(f"The request body is larger than {limit} bytes.", status=413,
                       type="invalid_request_error", code="request_too_large")
