"""A misbehaving worker for e2e tests, run as its own process: python -m tests.support.fake_worker PORT MODE.

It is not a real worker (it does not register itself): a test registers it in Consul by hand
(`tests.support.servers.registered`). Modes, for every model-addressed POST:
- pings: a stream of one chat chunk, then only `: ping` comments every 0.5 s, forever;
- huge: a JSON answer of --size bytes, made as it is sent (chunked, or with --content-length);
- status: an OpenAI error answer with --status;
- reset: reads the whole request, then closes the connection without answering.
GET /hits counts the POSTs received.
"""
from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

PIECE = 1024 * 1024


class Fake:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hits = 0

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.hits += 1
        return await getattr(self, self.args.mode)(request)

    async def pings(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "w0 "}, "logprobs": None,
                              "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        while True:
            await asyncio.sleep(0.5)
            await response.write(b": ping\n\n")

    async def huge(self, request: web.Request) -> web.StreamResponse:
        size = self.args.size
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.args.content_length:
            response.content_length = size
        await response.prepare(request)
        head, tail = b'{"junk": "', b'"}'
        await response.write(head)
        left = size - len(head) - len(tail)
        piece = b"x" * PIECE
        while left > 0:
            await response.write(piece[:left])
            left -= PIECE
        await response.write(tail)
        return response

    async def status(self, request: web.Request) -> web.StreamResponse:
        error = {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": "fake"}}
        return web.json_response(error, status=self.args.status)

    async def reset(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        raise web.HTTPServiceUnavailable()  # never sent: the connection is gone

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"hits": self.hits})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=["pings", "huge", "status", "reset"])
    parser.add_argument("--size", type=int, default=200 * 1024 * 1024)
    parser.add_argument("--content-length", action="store_true")
    parser.add_argument("--status", type=int, default=503)
    fake = Fake(parser.parse_args())
    app = web.Application()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, fake.answer)
    app.router.add_get("/hits", fake.count)
    web.run_app(app, host="127.0.0.1", port=fake.args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
