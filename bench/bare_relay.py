"""A bare relay (issue #13's reference rows): read the body, find `model` (orjson), forward the bytes to the
worker that serves it, pass its answer back (JSON whole, a stream chunk by chunk). None of the wrapper's
features: no Consul (a fixed model → URL map), no auth, no checks, no failover, timeouts, metrics or ids.
What the libraries alone cost for the hop, so the table shows what our features add on top.

    python -m bench.bare_relay HOST PORT --route echo=http://127.0.0.1:8001 \\
        --server uvicorn|granian --interface asgi|rsgi --client aiohttp|pyreqwest

uvicorn serves the ASGI app (uvloop + httptools, as common/server.py but without its protocol guard);
granian serves the ASGI app or the RSGI one (granian's own interface, no ASGI message dicts).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

HEALTH = b'{"status":"ok"}'
NOT_FOUND = b'{"error":{"message":"no such model","type":"invalid_request_error","param":"model","code":"model_not_found"}}'
JSON = "application/json"


class Answer(Protocol):
    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Client(Protocol):
    async def post(self, url: str, body: bytes, whole: bool) -> Answer: ...

    async def close(self) -> None: ...


# ---- the two clients -----------------------------------------------------------------------------------

class _AiohttpAnswer:
    def __init__(self, response: Any) -> None:
        self.response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", JSON)

    async def read(self) -> bytes:
        return await self.response.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self.response.content.readany():
                yield chunk
        finally:
            self.response.release()


class AiohttpClient:
    def __init__(self) -> None:
        import aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30), auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def post(self, url: str, body: bytes, whole: bool) -> Answer:
        response = await self.session.post(url, data=body, headers={"Content-Type": JSON})
        return _AiohttpAnswer(response)

    async def close(self) -> None:
        await self.session.close()


class _PyreqwestAnswer:
    def __init__(self, response: Any, stream: Any) -> None:
        self.response = response
        self.stream = stream
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", JSON)

    async def read(self) -> bytes:
        return bytes(await self.response.bytes())

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self.response.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)
        finally:
            await self.stream.__aexit__(None, None, None)


class PyreqwestClient:
    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder
        self.client = (ClientBuilder().gzip(False).brotli(False).zstd(False).deflate(False)
                       .follow_redirects(False).build())

    async def post(self, url: str, body: bytes, whole: bool) -> Answer:
        builder = self.client.post(url).headers({"Content-Type": JSON}).body_bytes(body)
        if whole:
            return _PyreqwestAnswer(await builder.build().send(), None)
        stream = builder.streamed_read_buffer_limit(1).build_streamed()  # else it reads 64 KiB ahead first
        return _PyreqwestAnswer(await stream.__aenter__(), stream)

    async def close(self) -> None:
        await self.client.close()


CLIENTS = {"aiohttp": AiohttpClient, "pyreqwest": PyreqwestClient}


def target(routes: dict[str, str], body: bytes) -> tuple[str | None, bool]:
    """The worker URL for the body's model (None: not served) and whether the answer is a stream."""
    try:
        parsed = orjson.loads(body)
        return routes.get(parsed.get("model")), parsed.get("stream") is True
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None, False


# ---- the two interfaces ------------------------------------------------------------------------------

class AsgiRelay:
    def __init__(self, routes: dict[str, str], client: str) -> None:
        self.routes = routes
        self.client_name = client
        self.client: Client | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await self._answer(send, 200 if scope["path"] == "/health" else 404, JSON, HEALTH)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        base, stream = target(self.routes, body)
        if base is None:
            await self._answer(send, 404, JSON, NOT_FOUND)
            return
        assert self.client is not None
        answer = await self.client.post(base + scope["path"], body, whole=not stream)
        if not stream:
            await self._answer(send, answer.status, answer.content_type, await answer.read())
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-type", answer.content_type.encode())]})
        async for chunk in answer.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _answer(send: Any, status: int, content_type: str, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = CLIENTS[self.client_name]()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class RsgiRelay:
    """granian's RSGI: the body in one call, the answer in one call (or a stream transport)."""

    def __init__(self, routes: dict[str, str], client: str) -> None:
        self.routes = routes
        self.client_name = client
        self.client: Client | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        pass  # the client is made on the first request, inside the running loop (aiohttp needs one)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.client is not None:
            self._closing = loop.create_task(self.client.close())  # granian calls this from the running loop

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "GET":
            proto.response_bytes(200 if scope.path == "/health" else 404, [("content-type", JSON)], HEALTH)
            return
        body = await proto()
        base, stream = target(self.routes, body)
        if base is None:
            proto.response_bytes(404, [("content-type", JSON)], NOT_FOUND)
            return
        if self.client is None:
            self.client = CLIENTS[self.client_name]()
        answer = await self.client.post(base + scope.path, body, whole=not stream)
        if not stream:
            proto.response_bytes(answer.status, [("content-type", answer.content_type)], await answer.read())
            return
        transport = proto.response_stream(answer.status, [("content-type", answer.content_type)])
        async for chunk in answer.chunks():
            await transport.send_bytes(chunk)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--route", action="append", required=True, metavar="MODEL=URL")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--interface", choices=("asgi", "rsgi"), default="asgi")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="aiohttp")
    args = parser.parse_args(argv)
    routes = dict(r.split("=", 1) for r in args.route)
    if args.server == "uvicorn":
        import uvloop
        if args.interface != "asgi":
            parser.error("uvicorn serves ASGI only")
        import uvicorn
        config = uvicorn.Config(AsgiRelay(routes, args.client), host=args.host, port=args.port, http="httptools",
                                lifespan="on", access_log=False, log_config=None, ws="none",
                                log_level="warning", timeout_keep_alive=75)
        uvloop.run(uvicorn.Server(config).serve())
        return 0
    from .granian_serve import serve_granian
    serve_granian("bench.bare_relay:granian_app", {"routes": routes, "client": args.client, "interface": args.interface},
                  args.host, args.port, args.interface)
    return 0


def granian_app() -> AsgiRelay | RsgiRelay:
    """granian's factory, called in its worker process."""
    from .granian_serve import factory_args
    args = factory_args()
    return (AsgiRelay if args["interface"] == "asgi" else RsgiRelay)(args["routes"], args["client"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
