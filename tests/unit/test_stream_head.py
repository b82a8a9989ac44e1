"""A stream's head before its first token (issue #15), in process. A generator that yields ACCEPTED (HFChatGen,
once the request passed its checks and the model starts on the prompt) has the worker send its HTTP head
at once, alone, so the wrapper and the client get ready while the model works; any other stream still
sends its head with its first event, in one write. On the wrapper's side, up to a stream's first event
the first-byte timeout rules, not the idle timeout, whether or not the head came early. The worker app is
driven through common.protocol's guarded protocol over a fake transport that keeps each write apart."""
from __future__ import annotations

import asyncio
import json
import re

import uvicorn
from aiohttp import web
from uvicorn.server import ServerState

from common.errors import InvalidRequest
from common.protocol import guarded_protocol
from common.settings import LimitSettings, RetrySettings, Settings, TimeoutSettings, WrapperSettings
from generators import ACCEPTED, Generator
from generators.echo import EchoGen
from svc_mgr import Instance, RoutingTable
from tests.unit.test_hop import BODY, EVENT, MODEL, PATH, Workers, in_order, relayed
from tests.unit.test_protocol import FakeTransport
from worker.app import Worker
from wrapper.hop import Hop


class Writes(FakeTransport):
    """Each write apart: whether the head left alone or with the first event is the point here."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        super().write(data)
        self.writes.append(bytes(data))


class SlowStart(Generator):
    """Accepts, then holds its first token until `go` is set (a model processing the prompt)."""

    models = ("slow",)

    def __init__(self, fail_before_accepting: bool = False) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.fail_before_accepting = fail_before_accepting

    async def chat_stream(self, request):
        if self.fail_before_accepting:
            raise InvalidRequest("The prompt is too long for this model.", param="messages",
                                 code="context_length_exceeded")
        yield ACCEPTED
        await self.go.wait()
        yield "first"
        yield " second"


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds (a generous bound: the machine may be busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def serve(generator: Generator) -> Writes:
    """A streamed chat request to a Worker around `generator`, on one connection of the guarded protocol."""
    worker = Worker(generator, Settings())
    await worker.start()
    config = uvicorn.Config(worker.app(), http=guarded_protocol(LimitSettings()), lifespan="off", log_config=None)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Writes()
    transport.protocol = protocol
    protocol.connection_made(transport)
    body = json.dumps({"model": generator.models[0], "stream": True,
                       "messages": [{"role": "user", "content": "one two"}]}).encode()
    protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await until(lambda: transport.writes, "the worker's first write")
    return transport


def test_an_accepted_stream_sends_its_head_alone_before_the_first_token():
    async def main() -> None:
        generator = SlowStart()
        transport = await serve(generator)
        await asyncio.sleep(0.1)  # nothing more may come: the generator waits for `go`
        assert len(transport.writes) == 1, transport.writes  # the head, while the first token is awaited
        head = transport.writes[0]
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        assert b"text/event-stream" in head and b"data:" not in head
        generator.go.set()
        await until(lambda: bytes(transport.written).endswith(b"\r\n0\r\n\r\n"), "the end of the stream")
        rest = b"".join(transport.writes[1:])
        assert b'"content":"first"' in rest and rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    asyncio.run(main())


def test_a_stream_that_does_not_accept_early_sends_its_head_with_its_first_event():
    async def main() -> None:
        transport = await serve(EchoGen(models=["echo"]))
        first = transport.writes[0]
        assert first.startswith(b"HTTP/1.1 200 ") and b'data: {"id":"chatcmpl-' in first  # one write, as before
    asyncio.run(main())


def test_a_failure_before_accepting_is_still_a_plain_http_error():
    async def main() -> None:
        transport = await serve(SlowStart(fail_before_accepting=True))
        answer = bytes(transport.written)
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"context_length_exceeded"' in answer
    asyncio.run(main())


# ---- the wrapper's hop: the first-byte timeout runs up to the first event ---------------------------

def head_then(pause: float, first: bytes | None):
    """A worker sending its head at once, then, after `pause` seconds, `first` (or nothing at all)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # aiohttp sends the head here, alone
        await asyncio.sleep(pause)
        if first is not None:
            await response.write(first)
        return response
    return handler


def relay_from(handler, timeouts: TimeoutSettings) -> bytes:
    async def main() -> bytes:
        workers = Workers()
        table = RoutingTable(in_order, cooldown=60)
        table.set_service("svc", [await workers.start_handler("early-head", handler)])
        hop = Hop(table, WrapperSettings(max_attempts=1, timeouts=timeouts), None)
        await hop.start()
        try:
            return await relayed(hop)
        finally:
            await hop.close()
            await workers.stop()
    return asyncio.run(main())


def test_a_first_event_later_than_the_idle_timeout_but_within_the_first_byte_timeout_is_relayed():
    out = relay_from(head_then(0.8, EVENT), TimeoutSettings(connect=1.0, first_byte=5.0, idle=0.3, total=10.0))
    assert out == EVENT  # a model's prompt processing after an early head is not a stalled stream


def test_no_first_event_within_the_first_byte_timeout_ends_with_first_byte_timeout():
    out = relay_from(head_then(2.0, None), TimeoutSettings(connect=0.3, first_byte=0.3, idle=5.0, total=10.0))
    assert json.loads(out.split(b"data: ", 1)[1])["error"]["code"] == "first_byte_timeout"


# ---- the wrapper's hop: up to a stream's first event, a failed attempt is taken over ------------------

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


class Outcomes:
    """The Hop's AttemptObserver, recording."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str | int]] = []
        self.failovers: list[str | int] = []

    def attempted(self, model, instance, outcome) -> None:
        self.attempts.append((instance.id, outcome))

    def failover(self, reason) -> None:
        self.failovers.append(reason)


async def head_then_gone(workers: Workers, name: str, before: bytes = b"") -> Instance:
    """A worker that reads the request, sends a stream's head (and `before`, as one chunk), then drops the
    connection: a model server dying during the prompt's processing."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)))
        workers.hits.append(name)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if before:
            writer.write(b"%x\r\n%s\r\n" % (len(before), before))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    workers._servers.append(server)
    return Instance(id=name, service="svc", address="127.0.0.1", port=server.sockets[0].getsockname()[1],
                    models=(MODEL,))


async def streaming(workers: Workers, name: str, *events: bytes) -> Instance:
    """A healthy worker streaming `events` then [DONE]."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        workers.hits.append(name)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in (*events, DONE):
            await response.write(event)
        return response
    return await workers.start_handler(name, handler)


def with_hop(instances, scenario, timeouts: TimeoutSettings | None = None, max_attempts: int = 3, **kwargs):
    """`scenario(hop, outcomes)` run against a Hop over the instances `instances(workers)` makes, tried in
    their order; returns what it returned, the workers and the outcomes."""
    async def main():
        workers = Workers()
        table = RoutingTable(in_order, cooldown=60)
        outcomes = Outcomes()
        try:
            table.set_service("svc", await instances(workers))
            hop = Hop(table, WrapperSettings(max_attempts=max_attempts, timeouts=timeouts or TimeoutSettings(),
                                             **kwargs), None)
            hop.observer = outcomes
            await hop.start()
            try:
                return await scenario(hop, outcomes), workers, outcomes
            finally:
                await hop.close()
        finally:
            await workers.stop()
    return asyncio.run(main())


def through(instances, timeouts: TimeoutSettings | None = None, max_attempts: int = 3,
            **kwargs) -> tuple[bytes, Workers, Outcomes]:
    """One stream relayed through a Hop over the instances `instances(workers)` makes."""
    return with_hop(instances, lambda hop, outcomes: relayed(hop), timeouts, max_attempts, **kwargs)


def error_code_of(out: bytes) -> str:
    assert not out.endswith(DONE), out
    return json.loads(out.rsplit(b"data: ", 1)[1])["error"]["code"]


def test_a_stream_whose_worker_dies_after_its_head_and_before_its_first_event_is_taken_over():
    async def instances(workers):
        return [await head_then_gone(workers, "dying"), await streaming(workers, "healthy", EVENT)]
    out, workers, outcomes = through(instances)
    assert out == EVENT + DONE  # the client sees the second worker's stream, and nothing of the first
    assert workers.hits == ["dying", "healthy"]
    assert outcomes.attempts == [("dying", "worker_failed"), ("healthy", "ok")]  # each attempt counted once
    assert outcomes.failovers == ["worker_failed"]


def test_keep_alive_comments_before_the_failure_do_not_stop_the_take_over():
    async def instances(workers):
        return [await head_then_gone(workers, "dying", PING), await streaming(workers, "healthy", EVENT)]
    out, workers, _ = through(instances)
    assert out == PING + EVENT + DONE  # a comment is no event: clients skip it
    assert workers.hits == ["dying", "healthy"]


def test_a_first_byte_timeout_after_an_early_head_is_taken_over():
    async def instances(workers):
        return [await workers.start_handler("silent", head_then(3.0, None)), await streaming(workers, "healthy", EVENT)]
    out, workers, outcomes = through(instances, TimeoutSettings(connect=0.2, first_byte=0.3, idle=5.0, total=10.0))
    assert out == EVENT + DONE
    assert outcomes.failovers == ["first_byte_timeout"]


def test_a_stream_that_failed_after_its_first_event_is_not_taken_over():
    async def instances(workers):
        return [await head_then_gone(workers, "dying", EVENT), await streaming(workers, "healthy", EVENT)]
    out, workers, _ = through(instances)
    assert out.startswith(EVENT) and error_code_of(out) == "worker_failed"
    assert workers.hits == ["dying"]  # the client has the first event: a second answer would repeat it


def test_without_after_send_retries_a_failure_before_the_first_event_ends_the_stream():
    async def instances(workers):
        return [await head_then_gone(workers, "dying"), await streaming(workers, "healthy", EVENT)]
    out, workers, _ = through(instances, retries=RetrySettings(after_send=False))
    assert error_code_of(out) == "worker_failed"
    assert workers.hits == ["dying"]  # the prompt is not run twice


def test_when_the_instance_taking_over_refuses_the_stream_ends_with_its_error():
    async def instances(workers):
        return [await head_then_gone(workers, "dying"), await workers.start("busy", 429, code="queue_full")]
    out, workers, _ = through(instances, max_attempts=2)
    assert error_code_of(out) == "queue_full"  # the refusal's own error, as a whole answer would carry it
    assert workers.hits == ["dying", "busy"]


def test_a_stream_holds_the_request_body_only_until_its_first_event():
    async def instances(workers):
        return [await streaming(workers, "healthy", EVENT, EVENT)]

    async def scenario(hop, outcomes):
        attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
        assert attempt.tries.body == BODY  # kept while another instance may still take the request over
        chunks = hop.stream(attempt)
        assert (await anext(chunks)).startswith(EVENT)
        assert attempt.tries.body == b""  # a long stream does not keep a long prompt alive
        await chunks.aclose()
    with_hop(instances, scenario)


def slow_worker(pause: float):
    """`instances` for with_hop: one worker, "slow", sending its head at once and EVENT after `pause`."""
    async def instances(workers):
        return [await workers.start_handler("slow", head_then(pause, EVENT))]
    return instances


def test_a_streams_attempt_counts_as_answered_at_its_first_event_and_once():
    async def scenario(hop, outcomes):
        attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
        assert outcomes.attempts == []  # its head came, but it may still fail over
        chunks = hop.stream(attempt)
        assert await anext(chunks) == EVENT
        assert outcomes.attempts == [("slow", "ok")]
        await chunks.aclose()  # closes the attempt: not counted again
        attempt.close()
        assert outcomes.attempts == [("slow", "ok")]
    with_hop(slow_worker(0.3), scenario)


def test_a_streams_attempt_closed_before_any_event_counts_as_answered():
    """A client that leaves while the model processes the prompt: the attempt did not fail."""
    async def scenario(hop, outcomes):
        attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
        attempt.close()  # the response was never relayed (SSEResponse's on_close)
        assert outcomes.attempts == [("slow", "ok")]
    with_hop(slow_worker(1.0), scenario)
