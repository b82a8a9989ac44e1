"""The HTTP glue both apps share: the FastAPI app with its direct hot routes, request ids, OpenAI-shaped
error responses, bounded bodies, the client-disconnect watch and the one SSE writer."""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import wire
from .errors import InvalidRequest, OpenAIError, error_json, to_openai_error

log = logging.getLogger(__name__)

JSON = "application/json"
T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's status for a client that went away; never reaches the client

SECRET_HEADER = "x-worker-secret"  # the wrapper -> worker shared secret (worker.secret)


def presents_secret(request: Request, secret: bytes | None) -> bool:
    """Whether the caller sent the worker secret (compared in constant time); never when none is set."""
    return secret is not None and hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), secret)


class ClientGone(Exception):
    pass


# ---- request ids -----------------------------------------------------------------------------------

REQUEST_ID = b"x-request-id"
_REQUEST_ID_KEY = "request_id"  # where the id in use is kept in the ASGI scope
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")  # what may reach logs, headers and workers


def new_request_id() -> str:
    return os.urandom(8).hex()


def assign_request_id(scope: Scope) -> bytes:
    """The request's id: the client's X-Request-ID if short and made of safe characters, else a new one,
    which then replaces the client's in the scope's headers, so whatever reads the header sees the id in
    use. Kept in the scope for `request_id`; returned as the header value."""
    headers = scope["headers"]
    for name, value in headers:
        if name == REQUEST_ID:
            if _SAFE_REQUEST_ID.fullmatch(value):
                scope[_REQUEST_ID_KEY] = value.decode("ascii")
                return value
            break
    request_id = new_request_id()
    scope["headers"] = [h for h in headers if h[0] != REQUEST_ID] + [(REQUEST_ID, request_id.encode())]
    scope[_REQUEST_ID_KEY] = request_id
    return request_id.encode()


RawHeaders = Iterable[tuple[bytes, bytes]]  # an ASGI scope's headers: lower-case names


def raw_header(headers: RawHeaders, name: bytes) -> str | None:
    """One header from the ASGI scope's list, decoded: a scan of the raw list costs a tenth of Starlette's
    Headers.get, which decodes every header."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def request_id(request: Request) -> str:
    """The id `assign_request_id` gave this request ("-" in an app served without DirectRoutes)."""
    return request.scope.get(_REQUEST_ID_KEY, "-")


def scope_request_id(scope: Mapping[str, Any]) -> str:
    return scope.get(_REQUEST_ID_KEY, "-")


def _with_request_id(send: Send, value: bytes) -> Send:
    header = (REQUEST_ID, value)

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return send_with_id


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


class SSEResponse(Response):
    """The one SSE writer, on both sides: sends already-framed chunks as they come, and stops pulling them
    (closing their source) as soon as the client goes away. Lighter than sse-starlette's
    EventSourceResponse (no task group, no ping task, one disconnect watcher at most): see
    docs/performance.md. It also carries any other streamed body (`media_type`)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], status_code: int = 200, headers: Mapping[str, str] | None = None,
                 on_close: Callable[[], None] | None = None, media_type: str = wire.SSE) -> None:
        self.chunks = chunks
        self.on_close = on_close  # runs however the response ends, even if `chunks` never started
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers({**SSE_HEADERS, **headers} if headers else SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await unless_disconnected(receive, self._pump(send))
        except ClientGone:
            pass
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _pump(self, send: Send) -> None:
        async with aclosing(self.chunks) as chunks:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# a proxy in front (nginx) must pass events on at once instead of buffering them
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(wire.dumps(obj), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: OpenAIError) -> Response:
    return Response(error_json(exc), status_code=exc.status, media_type=JSON, headers=exc.headers)


async def handle_error(request: Request, exc: Exception) -> Response:
    """Every failure an app meets, as an OpenAI-shaped response, logged with the request id: unexpected
    ones with their traceback, the server's own failures (5xx) and timeouts as warnings, a client's other
    mistakes at DEBUG (a warning per bad request would let any client flood the log)."""
    if isinstance(exc, ClientGone):
        log.debug("request %s: the client went away", request_id(request))
        return Response(status_code=CLIENT_CLOSED)
    error = to_openai_error(exc, request.method, request.url.path)
    if not isinstance(exc, (OpenAIError, HTTPException, RequestValidationError)):
        log.error("request %s: unexpected error", request_id(request), exc_info=exc)
    else:
        level = logging.WARNING if error.status >= 500 or error.status == 408 else logging.DEBUG
        log.log(level, "request %s: %d %s: %s", request_id(request), error.status, error.code, error.message)
    return error_response(error)


EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: handle_error, RequestValidationError: handle_error,
                                      OpenAIError: handle_error, Exception: handle_error}

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI, in front of the app: gives every request its id (`assign_request_id`) and every response
    its X-Request-ID; answers a few hot POST endpoints without the framework's middleware stack and route
    matching (a tenth of the wrapper's CPU per request); everything else, lifespan included, goes to
    `app`. Failures become OpenAI errors through the same handler as in the app."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        id_value = assign_request_id(scope)
        endpoint = self.endpoints.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, _with_request_id(send, id_value))
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await handle_error(request, exc)
        response.raw_headers.append((REQUEST_ID, id_value))  # cheaper than wrapping `send`; a new Response each time
        await response(scope, receive, send)


# How the hot POST endpoints appear in /openapi.json: any JSON object, passed on untouched.
_JSON_BODY = {"requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}}}


def openai_app(title: str, *, posts: Mapping[str, Endpoint], lifespan: Any) -> tuple[FastAPI, ASGIApp]:
    """A FastAPI app whose errors (404/405 on unknown routes and validation errors included) are
    OpenAI-shaped, with `posts` registered for the schema but served by `DirectRoutes` in front of it.
    Returns the FastAPI app, to add GET routes, dependencies or middleware to, and the ASGI app to serve."""
    app = FastAPI(title=title, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS,
                  docs_url=None, redoc_url=None)  # the interactive docs would load from a CDN
    for path, endpoint in posts.items():
        app.add_api_route(path, endpoint, methods=["POST"], openapi_extra=_JSON_BODY)
    return app, DirectRoutes(app, posts)


DRAIN_FACTOR = 4  # an oversize body up to this many times the limit is read and dropped, so the
                  # client gets to read the 413 instead of a reset connection


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 for one larger than `limit` bytes, which is never held in memory.
    ClientGone if the client hangs up. A client that pauses too long between two reads of its body is
    answered 408 by the server's protocol (common/protocol.py), which then hangs up: here that is ClientGone
    too. No timer here: the usual body arrives with its headers and costs none (docs/performance.md)."""
    declared = raw_header(request.scope["headers"], b"content-length")
    if declared is not None and not declared.isdigit():
        raise InvalidRequest("Content-Length is not a number.")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # not request.stream(): no generator per body
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            chunks.clear()
            if size > limit * DRAIN_FACTOR:
                break
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def body_timeout(timeout: float) -> OpenAIError:
    return OpenAIError(f"The request body stopped arriving for {timeout:g} seconds.", status=408,
                       type="invalid_request_error", code="body_timeout", headers={"Connection": "close"})


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(f"The request body is larger than {limit} bytes.", status=413,
                       type="invalid_request_error", code="request_too_large")
