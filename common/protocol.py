"""uvicorn's httptools protocol, guarded against hostile clients before a request reaches the app: a cap
on the request line and headers (431) and on a chunked body's framing and trailers, deadlines for the
headers and for each next read of a body (408), a bound on a body left unread after the answer, and the 503 over limits.max_connections
in OpenAI's shape. Parsing stays httptools'; this
only counts bytes and keeps one timer per connection (see docs/reliability.md)."""
from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import InvalidRequest, OpenAIError, Unavailable, error_json
from .http import JSON, REQUEST_ID, assign_request_id, error_response, new_request_id, scope_request_id
from .http import body_timeout as _body_timeout
from .settings import LimitSettings

log = logging.getLogger(__name__)

# After a rejection, what the client still sends is read and dropped for a while, so that it gets to read
# the answer instead of a reset connection; then the connection closes however much is still coming.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection. `limits` is set by `guarded_protocol`. State: `_header_room`, the bytes the current
    request line and headers may still take (None once they are complete, up to the end of the body);
    `_in_headers`, true from a request's first byte to the end of its headers; `_read_timer`, the one
    deadline the connection is waiting for the client under. A request that arrives in one read (the
    usual case on a kept-alive connection) arms no timer at all: timers cost microseconds each."""

    limits: LimitSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_room: int | None = self.limits.max_header_bytes
        self._in_headers = False
        self._body_in_read = 0  # body bytes httptools found in the read being fed
        self._framing_run = 0  # non-body bytes of the body's reads since one held mostly body
        self._read_timer: asyncio.TimerHandle | None = None
        self._rejected = False
        self._dropped = 0  # bytes read and dropped after a rejection

    # ---- the connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._headers_timed_out)  # even if no byte ever comes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            self._drop(data)
            return
        self._feed(data)
        if self._rejected:
            return
        if self._in_headers:
            if self._read_timer is None:
                # a request's headers span reads: they get header_timeout from the first of them on
                self._arm(self.limits.header_timeout, self._headers_timed_out)
        elif self._header_room is None and not self.cycle.response_complete:
            # a body spans reads: each next read must come within body_timeout (nginx's client_body_timeout)
            self._arm(self.limits.body_timeout, self._body_timed_out)

    def _feed(self, data: bytes) -> None:
        # httptools has no cap and joins a long header's pieces over and over (a 64 MiB header cost seconds
        # and 128 MiB): give it no more than the room left, and reject once there is none
        while (room := self._header_room) is not None and len(data) > room:
            if room:
                self._header_room = 0
                super().data_received(data[:room])
                if self._rejected or self.transport.is_closing():
                    return
            if self._header_room == 0:
                self._reject(OpenAIError(f"The request line and headers are larger than "
                                         f"{self.limits.max_header_bytes} bytes.", status=431,
                                         type="invalid_request_error", code="headers_too_large"), linger=True)
                return
            data = data[room:]  # the headers ended within the room: the rest is body or the next request
        if room is not None:
            self._header_room = room - len(data)
            super().data_received(data)
            return
        self._body_in_read = 0
        super().data_received(data)
        if self._header_room is None:  # still in the body
            self._count_framing(len(data) - self._body_in_read)

    def _count_framing(self, framing: int) -> None:
        """Chunk framing and trailers are headers in all but name, and httptools joins a trailer's pieces
        as it does a header's: cut the connection once reads that hold more of them than body bytes add
        up to more than the header cap. Real chunks are mostly body; a trailer is small."""
        self._framing_run = 0 if self._body_in_read >= framing else self._framing_run + framing
        if self._framing_run > self.limits.max_header_bytes:
            log.warning("request %s: chunk framing or trailers over %d bytes; connection closed",
                        scope_request_id(self.cycle.scope), self.limits.max_header_bytes)
            self._rejected = True
            self._close()

    # ---- parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        self._header_room = None
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = OneWritePerResponse(self.transport, self.loop)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        super().on_body(body)
        if self.cycle.response_complete:  # the rest of a body answered unread: dropped, and timed
            self._arm(self.limits.body_timeout, self._close)

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_room = self.limits.max_header_bytes
        self._framing_run = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # answered before the body was read (401, 404...): uvicorn waits for the rest of it with no
            # deadline, so give it one
            self._arm(self.limits.body_timeout, self._close)

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to what httptools cannot parse
        self._reject(InvalidRequest("The request is not valid HTTP/1.1.", code="invalid_http"), linger=True)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn answers a request over limit_concurrency with its own plain-text 503: answer in OpenAI's
        # shape, with a request id and Retry-After, instead
        super()._start_asgi_task(cycle, _over_limit if app is service_unavailable else app)

    # ---- timers and rejections -------------------------------------------------------------------

    def _arm(self, seconds: float, then: Any) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _headers_timed_out(self) -> None:
        self._read_timer = None
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # a pipelined request behind an answer still under way: uvicorn reads no more until it is done
            self._arm(self.limits.header_timeout, self._headers_timed_out)
            return
        if not self._in_headers:
            self._close()  # nothing of a request came: an idle connection, closed without a word
            return
        self._reject(OpenAIError(f"The request line and headers did not arrive within "
                                 f"{self.limits.header_timeout:g} seconds.", status=408,
                                 type="invalid_request_error", code="header_timeout"), linger=False)

    def _body_timed_out(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.transport.is_closing():
            self._close()  # an answer is under way: it cannot become a 408 any more
            return
        # the app is waiting for the rest of the body: answer for it; it then sees the client gone
        error = _body_timeout(self.limits.body_timeout)
        _log_rejection(scope_request_id(cycle.scope), error)
        self._rejected = True
        self.transport.write(raw_response(error, scope_request_id(cycle.scope), self.server_state.default_headers))
        cycle.disconnected = True  # the app's receive() says so at once; whatever it still sends goes nowhere
        cycle.message_event.set()
        self._close()

    def _reject(self, error: OpenAIError, *, linger: bool) -> None:
        """Answer `error` outside the app, with a new request id, and close the connection."""
        request_id = new_request_id()
        _log_rejection(request_id, error)
        self._rejected = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self._close()  # an earlier request's answer is under way: never write into the middle of it
            return
        self.transport.write(raw_response(error, request_id, self.server_state.default_headers))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self._arm(LINGER_SECONDS, self._close)
        else:
            self._close()

    def _drop(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self._close()

    def _close(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class OneWritePerResponse:
    """A request's view of the connection: its answer's head is held until the first body write, so a
    whole JSON answer leaves in one write (uvicorn writes head and body apart). A process killed between
    two writes would leave a proxy in front (nginx) holding a head without its body, a failed request it
    can no longer retry elsewhere; and it is one send() less per answer. A head with no body write in the
    same turn of the loop (a stream waiting for its first chunk) goes out on the next turn."""

    __slots__ = ("_transport", "_loop", "_held", "_first")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def guarded_protocol(limits: LimitSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), holding `limits`."""

    class Guarded(GuardedHttpToolsProtocol):
        pass

    Guarded.limits = limits
    return Guarded


def raw_response(error: OpenAIError, request_id: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """`error` as a whole HTTP/1.1 response that closes the connection, for answers written outside the app."""
    body = error_json(error)
    head = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n".encode()]
    headers = [*default_headers, (b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), (REQUEST_ID, request_id.encode()),
               *((k.encode(), v.encode()) for k, v in error.headers.items())]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([*head, b"\r\n", body])


async def _over_limit(scope: Any, receive: Any, send: Any) -> None:
    id_value = assign_request_id(scope)
    error = Unavailable("The server has too many connections open; retry shortly.", code="too_many_connections",
                        headers={"Retry-After": "1", "Connection": "close"})
    _log_rejection(id_value.decode(), error)
    response = error_response(error)
    response.raw_headers.append((REQUEST_ID, id_value))
    await response(scope, receive, send)


def _log_rejection(request_id: str, error: OpenAIError) -> None:
    log.warning("request %s: %d %s: %s", request_id, error.status, error.code, error.message)
