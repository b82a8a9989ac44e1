"""Issue #13's client candidate: wrapper/hop.py's Hop with pyreqwest (Rust's reqwest/hyper) instead of aiohttp.

A bench-side subclass, so the product is unchanged: only connecting and sending (`start`, `close`, `_send`)
are replaced. The answer is handed to the Hop as an aiohttp-shaped object (`_Answer`: status, headers,
content.readany/at_eof, read, release, close), so the Hop's own code still does the rest — failover, the
retry budget, the first-byte/idle/total timeouts, the answer cap, the SSE error event — with the same
features as the `wrapper` row. pyreqwest's read errors are raised as aiohttp.ClientPayloadError, which is
what the Hop catches for a worker failing mid-answer.

Differences that remain (a bench row, not a product client):
- a JSON answer (`whole`) is read by pyreqwest in full before `send()` returns (its fastest path), so the
  `max_answer_bytes` cap of an answer without Content-Length applies after it was buffered, not while;
- a stream is read with pyreqwest's read-ahead at its minimum (STREAM_READ_AHEAD), so chunks are relayed as
  they arrive;
- a stream's connection is released by a task (pyreqwest closes a streamed answer asynchronously, the
  Hop's Attempt.close is synchronous).
"""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, PyreqwestError
from pyreqwest.http import HeaderMap
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from common.errors import BadGateway, GatewayTimeout
from wrapper.hop import Attempt, Hop

# pyreqwest reads a streamed body ahead before `__aenter__` returns, up to this many bytes (default 64 KiB):
# with the default, a stream's first chunk waited until 64 KiB had come or the stream had ended, and an
# idle timeout around a read could not fire while it filled. 1: each chunk is handed on as it arrives.
STREAM_READ_AHEAD = 1


class _Body:
    """The part of aiohttp's StreamReader the Hop reads: `readany()` (b"" at the end) and `at_eof()`."""

    def __init__(self, response: Response | None, content: bytes | None) -> None:
        self._reader = response.body_reader if response is not None else None
        self._content = content  # a JSON answer, read in full by pyreqwest
        self._eof = response is None

    async def readany(self) -> bytes:
        if self._content is not None:
            content, self._content = self._content, None
            return content
        if self._reader is None or self._eof:
            return b""
        try:
            chunk = await self._reader.read_chunk()
        except PyreqwestError as exc:  # the Hop's word for "the worker failed mid-answer"
            raise aiohttp.ClientPayloadError(str(exc)) from exc
        if chunk is None:
            self._eof = True
            return b""
        return bytes(chunk)

    def at_eof(self) -> bool:
        return self._eof and self._content is None


class _Answer:
    """A pyreqwest answer in the shape of aiohttp's ClientResponse, as far as wrapper/hop.py uses it."""

    def __init__(self, response: Response, content: bytes | None, stream: StreamRequest | None) -> None:
        self.status = response.status
        self.headers: HeaderMap = response.headers
        self._stream = stream
        self._whole = content
        self.content = _Body(response if stream is not None else None, content)
        length = response.headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None

    async def read(self) -> bytes:
        if self._whole is not None:
            self.content = _Body(None, None)
            return self._whole
        chunks = []
        while chunk := await self.content.readany():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            asyncio.get_running_loop().create_task(stream.__aexit__(None, None, None))


def _never_connected(exc: ConnectError) -> bool:
    """pyreqwest raises ConnectError also for a connection closed after the request was sent; only hyper's
    "client error (Connect)" cause says the request never left (what aiohttp's ClientConnectorError says)."""
    causes = (exc.details or {}).get("causes", [])
    return any(cause.get("message") == "client error (Connect)" for cause in causes)


class PyreqwestHop(Hop):
    """Hop over one pooled pyreqwest client, created at start-up."""

    _client: Client | None = None

    async def start(self) -> None:
        self._start_client()
        self._session = self._client  # type: ignore[assignment]  # Hop.open checks start() ran by it

    def _start_client(self) -> None:
        self._client = (ClientBuilder()
                        .max_connections(self.settings.max_connections)
                        .connect_timeout(timedelta(seconds=self.timeouts.connect))
                        .pool_idle_timeout(timedelta(seconds=30))  # as the Hop's aiohttp pool, under the worker's 75 s
                        .gzip(False).brotli(False).zstd(False).deflate(False)  # bytes passed on untouched
                        .follow_redirects(False).referer(False)
                        .build())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _send(self, attempt: Attempt) -> None:
        assert self._client is not None
        tries = attempt.tries
        whole = tries.whole
        builder = (self._client.post(attempt.instance.base_url + tries.path)
                   .headers(self._headers(tries.request_id, tries.content_type, attempt.instance))
                   .body_bytes(tries.body))
        first_byte = self.timeouts.connect + self.timeouts.first_byte
        try:
            async with asyncio.timeout(self._remaining(attempt.deadline, first_byte)):
                if whole:
                    response = await builder.build().send()
                    answer = _Answer(response, bytes(await response.bytes()), None)
                else:
                    stream = builder.streamed_read_buffer_limit(STREAM_READ_AHEAD).build_streamed()
                    answer = _Answer(await stream.__aenter__(), None, stream)
        except ConnectTimeoutError:
            raise GatewayTimeout("Connecting to the worker timed out.", code="connect_timeout") from None
        except TimeoutError:
            raise GatewayTimeout("The worker sent nothing within the first-byte timeout.",
                                 code="first_byte_timeout") from None
        except ConnectError as exc:
            if _never_connected(exc):  # refused, unroutable: nothing was sent
                raise BadGateway("The worker could not be reached.", code="worker_unreachable") from None
            raise BadGateway("The worker closed the connection without answering.", code="worker_failed") from None
        except PyreqwestError:  # reset or closed once connected: the worker may have read the request
            raise BadGateway("The worker closed the connection without answering.", code="worker_failed") from None
        attempt.response = answer  # type: ignore[assignment]  # aiohttp-shaped, see _Answer
        if whole or attempt.status == 404:  # as the Hop: the cap, and a 404's body tells a stale instance
            attempt.content = await self._read_body(attempt)


class JsonPyreqwestHop(PyreqwestHop):
    """pyreqwest for the answers read whole (JSON), the Hop's own aiohttp session for streams and audio,
    which pyreqwest relays slower (docs/performance.md): two pools, one per kind of answer."""

    async def start(self) -> None:
        await Hop.start(self)
        self._start_client()

    async def close(self) -> None:
        await Hop.close(self)
        if self._client is not None:
            await self._client.close()

    async def _send(self, attempt: Attempt) -> None:
        if attempt.tries.whole:
            await super()._send(attempt)
        else:
            await Hop._send(self, attempt)
