"""A lean Redis client for the request path: one pipelined connection speaking RESP2, commands written as
they come and replies matched to them in order. redis-py's asyncio client costs ~100 µs of CPU per
command here (its pool, its locks, its parser), this ~25 µs (docs/performance.md); the rate limiter
makes one or two commands per request. It knows `redis://[[user]:password@]host[:port][/db]`; other
URLs (rediss://, unix://) go through redis-py (wrapper/redis_store.py)."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

Arg = str | bytes | int | float


class RespError(Exception):
    """An error reply from Redis (not an outage)."""


def encode(args: tuple[Arg, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [await read_reply(reader) for _ in range(size)]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode(errors="replace"))
    raise ConnectionError(f"not a Redis reply: {line[:40]!r}")


class RespClient:
    """Connects on first use and again after a failure; a call that gets no reply within `timeout`
    raises TimeoutError and drops the connection (a hung server must not keep the next calls waiting)."""

    def __init__(self, host: str, port: int, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout: float = 0.25) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future] = deque()
        self._reading: asyncio.Task | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, timeout: float) -> RespClient | None:
        """A client for a plain redis:// URL; None for any other (TLS, unix sockets: redis-py's)."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            return None
        db = parts.path.strip("/")
        return cls(parts.hostname, parts.port or 6379, int(db) if db.isdigit() else 0,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, timeout)

    async def call(self, *args: Arg) -> Any:
        writer = self._writer if self._writer is not None and not self._writer.is_closing() else await self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(writer, args)
        except TimeoutError:
            self._drop()
            raise

    def _send(self, writer: asyncio.StreamWriter, args: tuple[Arg, ...]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        writer.write(encode(args))
        return future

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self._pending = deque()
                self._writer = writer
                self._reading = asyncio.get_running_loop().create_task(self._read(reader, writer, self._pending))
                try:
                    if self.password is not None:
                        await self._send(writer, ("AUTH", self.password) if self.username is None
                                         else ("AUTH", self.username, self.password))
                    if self.db:
                        await self._send(writer, ("SELECT", self.db))
                except BaseException:
                    self._drop()
                    raise
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pending: deque[asyncio.Future]) -> None:
        error: BaseException = ConnectionError("the connection to Redis was closed")
        try:
            while True:
                reply = await read_reply(reader)
                future = pending.popleft()
                if future.done():  # its caller timed out
                    continue
                if isinstance(reply, RespError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            error = exc if isinstance(exc, OSError) else ConnectionError(str(exc))
        finally:
            for future in pending:
                if not future.done():
                    future.set_exception(error)
            pending.clear()
            writer.close()
            if self._writer is writer:
                self._writer = None

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reading is not None:
            self._reading.cancel()

    async def close(self) -> None:
        reading = self._reading
        self._drop()
        if reading is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
