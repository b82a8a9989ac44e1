"""A fake OpenAI-compatible upstream for openai_worker.py: a real aiohttp server on a loopback port, run in a
thread of the test process (stopped by its fixture), that misbehaves on purpose. The upstream model a request
names picks the behaviour:

- `gzip`: a chat answer gzipped (as OpenAI's are); streamed, one gzip flush per event, and after the first
  event it holds the rest back until the test calls `release_stream` (so a relay that buffers never shows it)
- `slow`: answers after `SLOW_SECONDS` unless the caller hangs up first, which it records in `disconnected`
- `half`: sends half of a JSON answer (its Content-Length promising all of it), then closes the connection
- `leaky`: a 400 whose every error field holds the API key it was called with
- anything else: a plain JSON chat answer

Every other endpoint of the API surface (tests/e2e/test_api_surface.py) answers fixed bytes (`SURFACE`:
path -> JSON answer; `speech_audio`, `transcript_*`) and records what it got (`received`: path, Content-Type
and body bytes); `/audio/speech` sends its first chunk, then holds the rest back until `release_speech`
(for the upstream model `cut-speech`: closes the connection after the first chunk instead).
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import threading
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from common.multipart import read_form
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


# ---- the rest of the API surface: fixed answers, valid against OpenAI's schemas --------------------

def _response_object(model: str, text: str) -> dict[str, Any]:
    message = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    return {"id": "resp_fake", "object": "response", "created_at": 1700000000, "status": "completed",
            "completed_at": 1700000001, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "model": model, "output": [message], "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": None, "store": False, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                                "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                                                "total_tokens": 5},
            "metadata": {}}


# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
RESPONSE_TEXT = "fake response"
SURFACE: dict[str, bytes] = {
    "/v1/responses": orjson.dumps(_response_object("upstream-model", RESPONSE_TEXT)),
    "/v1/responses/input_tokens": orjson.dumps({"object": "response.input_tokens", "input_tokens": 7}),
    "/v1/images/generations": orjson.dumps({"created": 1700000000, "data": [{"b64_json": base64.b64encode(PNG).decode()}]}),
    "/v1/images/edits": orjson.dumps({"created": 1700000000, "data": [{"b64_json": base64.b64encode(PNG).decode()}]}),
    "/v1/moderations": orjson.dumps({"id": "modr-fake", "model": "upstream-model", "results": [{
        "flagged": True,
        "categories": {c: c == "violence" for c in (
            "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit", "illicit/violent",
            "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
            "violence/graphic")},
        "category_scores": {c: 0.9 if c == "violence" else 0.01 for c in (
            "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit", "illicit/violent",
            "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
            "violence/graphic")},
        "category_applied_input_types": {c: ["text"] for c in (
            "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit", "illicit/violent",
            "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
            "violence/graphic")}}]}),
    # vLLM's / Cohere's / Jina's shapes
    "/v1/rerank": orjson.dumps({"id": "rerank-fake", "model": "upstream-model", "usage": {"total_tokens": 9},
                                "results": [{"index": 1, "document": {"text": "b"}, "relevance_score": 0.9},
                                            {"index": 0, "document": {"text": "a"}, "relevance_score": 0.1}]}),
    "/v1/score": orjson.dumps({"id": "score-fake", "object": "list", "created": 1700000000, "model": "upstream-model",
                               "data": [{"index": 0, "object": "score", "score": 0.5}], "usage": {"total_tokens": 4}}),
}
TRANSCRIPT = "the fake transcript"
TRANSCRIPT_JSON = orjson.dumps({"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 2}})
TRANSCRIPT_SRT = b"1\n00:00:00,000 --> 00:00:02,000\nthe fake transcript\n\n"
TRANSCRIPT_EVENTS = [
    {"type": "transcript.text.delta", "delta": "the fake"},
    {"type": "transcript.text.delta", "delta": " transcript"},
    {"type": "transcript.text.done", "text": TRANSCRIPT,
     "usage": {"type": "tokens", "input_tokens": 5, "output_tokens": 3, "total_tokens": 8}},
]
SPEECH_AUDIO = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(256)) * 8  # 64 KiB, not text
SPEECH_FIRST = 4096  # bytes sent before the hold
CUT_SPEECH = "cut-speech"  # the upstream model whose speech stops after the first chunk


def response_events(model: str) -> list[dict[str, Any]]:
    done = _response_object(model, RESPONSE_TEXT)
    started = {k: v for k, v in done.items() if k != "usage"} | {"status": "in_progress", "output": [],
                                                                  "completed_at": None}
    return [{"type": "response.created", "sequence_number": 0, "response": started},
            {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_fake", "output_index": 0,
             "content_index": 0, "delta": RESPONSE_TEXT, "logprobs": []},
            {"type": "response.completed", "sequence_number": 2, "response": done}]


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
        self.received: list[tuple[str, str, bytes]] = []  # the surface's requests: path, Content-Type, body
        self.speech_held_until_released: bool | None = None  # False: the hold ran out before release_speech
        self._release = threading.Event()
        self._release_speech = threading.Event()
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

    def release_speech(self) -> None:
        self._release_speech.set()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        for path in SURFACE:
            app.router.add_post(path, self._surface)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcript)
        app.router.add_post("/v1/audio/translations", self._transcript)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _record(self, request: web.Request) -> bytes:
        raw = await request.read()
        self.received.append((request.path, request.headers.get("Content-Type", ""), raw))
        return raw

    async def _surface(self, request: web.Request) -> web.StreamResponse:
        raw = await self._record(request)
        if request.path == "/v1/responses" and (body := orjson.loads(raw)).get("stream"):
            return await self._events(request, [orjson.dumps(e) for e in response_events(body["model"])])
        return web.Response(body=SURFACE[request.path], content_type="application/json")

    async def _events(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(b"data: " + event + b"\n\n")
        await response.write_eof()
        return response

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        raw = await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        await response.write(SPEECH_AUDIO[:SPEECH_FIRST])
        if orjson.loads(raw)["model"] == CUT_SPEECH:
            assert request.transport is not None
            request.transport.close()
            return response
        released = await asyncio.get_running_loop().run_in_executor(None, self._release_speech.wait, HOLD_SECONDS)
        self.speech_held_until_released = released
        await response.write(SPEECH_AUDIO[SPEECH_FIRST:])
        await response.write_eof()
        return response

    async def _transcript(self, request: web.Request) -> web.StreamResponse:
        raw = await self._record(request)
        fields = read_form(raw, request.headers.get("Content-Type")).fields
        if fields.get("stream") == "true":
            return await self._events(request, [orjson.dumps(e) for e in TRANSCRIPT_EVENTS])
        if fields.get("response_format") == "srt":
            return web.Response(body=TRANSCRIPT_SRT, content_type="text/plain", charset="utf-8")
        if fields.get("response_format") == "text":
            return web.Response(body=TRANSCRIPT.encode() + b"\n", content_type="text/plain", charset="utf-8")
        return web.Response(body=TRANSCRIPT_JSON, content_type="application/json")

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
