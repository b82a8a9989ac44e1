"""common.protocol, in process: the header cap counts the request line and headers only, however the bytes
are split into reads; the header deadline; the answers written outside the app. A fake transport collects
what the protocol writes; the app behind it is a tiny ASGI app that reads the body and echoes its size."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
import uvicorn
from uvicorn.server import ServerState

from common.protocol import guarded_protocol
from common.settings import LimitSettings

CAP = 1024


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.Protocol | None = None  # told of the close, as a real transport does
        self.written = bytearray()
        self.closing = False
        self.eof = False

    def write(self, data) -> None:
        self.written += data

    def close(self) -> None:
        if not self.closing and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


async def body_size(scope, receive, send) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def connection(transport: FakeTransport | None = None, **limits):
    settings = LimitSettings(max_header_bytes=CAP, **limits)
    config = uvicorn.Config(body_size, http=guarded_protocol(settings), lifespan="off", log_config=None)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = transport or FakeTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    """Let the app's tasks answer (a few event loop rounds)."""
    await asyncio.sleep(0.05)


def request(header_bytes: int, body: bytes = b"") -> bytes:
    """A POST whose request line and headers take exactly `header_bytes` bytes."""
    start = f"POST / HTTP/1.1\r\nContent-Length: {len(body)}\r\nX-Filler: ".encode()
    return start + b"a" * (header_bytes - len(start) - 4) + b"\r\n\r\n" + body


def statuses(transport: FakeTransport) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(transport.written))]


@pytest.mark.parametrize("piece", [1, 7, 100, CAP, 10 * CAP])
def test_headers_at_the_cap_are_served_and_one_byte_more_is_431(piece):
    async def run(size: int) -> FakeTransport:
        protocol, transport = connection()
        data = request(size)
        for i in range(0, len(data), piece):
            protocol.data_received(data[i:i + piece])
        await settle()
        return transport

    assert statuses(asyncio.run(run(CAP))) == [200]
    transport = asyncio.run(run(CAP + 1))
    assert statuses(transport) == [431] and transport.eof  # answered, then lingering to read the rest
    answer = bytes(transport.written)
    assert b"\r\nx-request-id: " in answer and b"\r\nconnection: close\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"


def test_a_body_in_the_same_read_as_the_headers_does_not_count():
    async def run() -> FakeTransport:
        protocol, transport = connection()
        protocol.data_received(request(CAP, b"x" * (20 * CAP)))
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [200] and bytes(transport.written).endswith(str(20 * CAP).encode())


def test_each_pipelined_request_gets_the_whole_cap():
    async def run() -> FakeTransport:
        protocol, transport = connection()
        protocol.data_received(request(CAP - 10) + request(CAP))
        await settle()
        return transport

    assert statuses(asyncio.run(run())) == [200, 200]


def test_what_follows_a_rejection_is_dropped_not_parsed():
    async def run() -> FakeTransport:
        protocol, transport = connection()
        protocol.data_received(request(CAP + 1))
        written = len(transport.written)
        protocol.data_received(request(100))  # would be a valid request
        await settle()
        assert len(transport.written) == written
        protocol.data_received(b"a" * (2 * 1024 * 1024))  # past the linger allowance: closed
        return transport

    assert asyncio.run(run()).closing


def chunked(body: bytes, size: int, trailer: bytes = b"") -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("size, piece", [(20, 100_000), (20, 999), (4096, 3000)])
def test_chunked_bodies_and_a_small_trailer_are_served(size, piece):
    async def run() -> FakeTransport:
        protocol, transport = connection()
        data = chunked(b"x" * 60_000, size, b"X-Checksum: abc\r\n")
        for i in range(0, len(data), piece):
            protocol.data_received(data[i:i + piece])
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [200] and bytes(transport.written).endswith(b"60000")


def test_a_trailer_over_the_cap_closes_the_connection():
    async def run() -> FakeTransport:
        protocol, transport = connection()
        data = chunked(b"x" * 100, 100)[:-2] + b"X-Trailer: "
        protocol.data_received(data)
        for _ in range(8):
            protocol.data_received(b"a" * 100)
        assert not transport.closing  # under the cap so far
        for _ in range(10):
            protocol.data_received(b"a" * 100)
        await settle()
        return transport

    transport = asyncio.run(run())
    assert transport.closing and transport.written == b""


def test_half_headers_get_408_and_silence_a_plain_close():
    async def run(data: bytes) -> FakeTransport:
        protocol, transport = connection(header_timeout=0.05)
        if data:
            protocol.data_received(data)
        await asyncio.sleep(0.2)
        return transport

    transport = asyncio.run(run(b"POST / HTTP/1.1\r\nContent-"))
    assert statuses(transport) == [408] and transport.closing
    transport = asyncio.run(run(b""))
    assert transport.written == b"" and transport.closing


def test_an_answer_under_way_is_not_cut_by_the_next_requests_header_deadline():
    async def run() -> FakeTransport:
        protocol, transport = connection(header_timeout=0.05)
        protocol.data_received(b"GET /slow HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nX-Half")
        await asyncio.sleep(0.6)
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [200, 408] and transport.closing


def test_invalid_http_is_an_openai_shaped_400_with_a_request_id():
    async def run() -> FakeTransport:
        protocol, transport = connection()
        protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        await settle()
        return transport

    transport = asyncio.run(run())
    answer = bytes(transport.written)
    assert statuses(transport) == [400] and b"\r\nx-request-id: " in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_http"


def test_a_body_that_stops_arriving_gets_408_and_the_app_sees_the_client_gone():
    async def run() -> FakeTransport:
        protocol, transport = connection(body_timeout=0.05)
        protocol.data_received(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"mo")
        await asyncio.sleep(0.3)
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [408] and transport.closing
    assert b'"body_timeout"' in transport.written and b"x-request-id: " in transport.written.lower()


def test_the_body_timeout_is_per_read_not_for_the_whole_body():
    """Eight pieces 0.03 s apart take longer than the 0.1 s timeout in all, but each read comes within it."""
    async def run() -> FakeTransport:
        protocol, transport = connection(body_timeout=0.1)
        protocol.data_received(b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.03)
            protocol.data_received(b"x")
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [200] and transport.written.endswith(b"8") and not transport.closing


def test_an_answer_leaves_in_one_write_head_and_body_together():
    """A proxy in front must never hold a head without its body because the process died between two
    writes: the head waits for the first body write."""
    class Counting(FakeTransport):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []

        def write(self, data) -> None:
            self.writes.append(bytes(data))
            super().write(data)

    async def run() -> Counting:
        transport = Counting()
        protocol, _ = connection(transport)
        protocol.data_received(request(200, b"12345"))
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport) == [200]
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n5")
