"""A fake OpenAI-compatible upstream for openai_worker.py: a real aiohttp server on a loopback port, run in a
thread of the test process (stopped by its fixture), that misbehaves on purpose. The upstream model a request
names picks the behaviour:

- `gzip`: a chat answer gzipped (as OpenAI's are); streamed, one gzip flush per event, and after the first
  event it holds the rest back until the test calls `release_stream` (so a relay that buffers never shows it)
- `slow`: answers after `SLOW_SECONDS` unless the caller hangs up first, which it records in `disconnected`
- `half`: sends half of a JSON answer (its Content-Length promising all of it), then closes the connection
- `leaky`: a 400 whose every error field holds the API key it was called with
- anything else: a plain JSON chat answer
"""
from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from tests.support.procs import free_port

SLOW_SECONDS = 30.0  # far longer than any wait in the tests: only a hang-up ends it early
HOLD_SECONDS = 10.0  # how long a `gzip` stream waits for `release_stream` before sending the rest anyway
STREAM_WORDS = ["Hello", " compressed", " world", "!"]


def chat_answer(model: str, text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 3 + len(text.split())}}


def chat_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# a long, repetitive answer, so its gzipped form is clearly not the JSON itself
GZIP_TEXT = "the quick brown fox jumps over the lazy dog " * 40
GZIP_ANSWER = orjson.dumps(chat_answer("gzip", GZIP_TEXT))


class FakeUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.disconnected = threading.Event()  # a `slow` call's caller hung up
        self.slow_calls = 0
        self.stream_held_until_released: bool | None = None  # False: the hold ran out before release_stream
        self.gzipped = 0  # answers actually sent gzipped (the caller asked for gzip)
        self._release = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-upstream", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def release_stream(self) -> None:
        self._release.set()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        if model == "gzip":
            if body.get("stream"):
                return await self._gzip_stream(request, model)
            return self._gzip_json(request)
        if model == "slow":
            return await self._slow(request, model)
        if model == "half":
            return await self._half(request, model)
        if model == "leaky":
            return self._leaky(request)
        return web.json_response(chat_answer(model, "fast answer"))

    def _accepts_gzip(self, request: web.Request) -> bool:
        accepted = "gzip" in request.headers.get("Accept-Encoding", "")
        self.gzipped += accepted
        return accepted

    def _gzip_json(self, request: web.Request) -> web.Response:
        if not self._accepts_gzip(request):
            return web.Response(body=GZIP_ANSWER, content_type="application/json")
        return web.Response(body=gzip.compress(GZIP_ANSWER), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    async def _gzip_stream(self, request: web.Request, model: str) -> web.StreamResponse:
        events = [chat_chunk(model, {"role": "assistant", "content": ""})]
        events += [chat_chunk(model, {"content": word}) for word in STREAM_WORDS]
        events += [chat_chunk(model, {}, "stop"), b"data: [DONE]\n\n"]
        compressing = self._accepts_gzip(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               **({"Content-Encoding": "gzip"} if compressing else {})})
        await response.prepare(request)
        gz = zlib.compressobj(wbits=31)  # gzip framing; Z_SYNC_FLUSH makes each event decodable on arrival

        async def send(event: bytes) -> None:
            await response.write(gz.compress(event) + gz.flush(zlib.Z_SYNC_FLUSH) if compressing else event)

        await send(events[0])
        released = await asyncio.get_running_loop().run_in_executor(None, self._release.wait, HOLD_SECONDS)
        self.stream_held_until_released = released
        for event in events[1:]:
            await send(event)
        if compressing:
            await response.write(gz.flush())
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request, model: str) -> web.Response:
        self.slow_calls += 1
        deadline = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                self.disconnected.set()
                break
            await asyncio.sleep(0.02)
        return web.json_response(chat_answer(model, "slow answer"))

    async def _half(self, request: web.Request, model: str) -> web.StreamResponse:
        whole = orjson.dumps(chat_answer(model, "this answer is cut in the middle"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(whole)
        await response.prepare(request)
        await response.write(whole[: len(whole) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    def _leaky(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        error = {"message": f"Invalid request made with key {key}.", "type": f"invalid_request_error ({key})",
                 "param": f"messages[{key}]", "code": {"key": [key, {"again": key}]}}
        return web.json_response({"error": error}, status=400)
