"""wrapper.hop.Hop's failover decisions, in process: small aiohttp servers inside the test's event loop stand
in for workers (healthy, 503, 429 with Retry-After, a stale 404, huge answers, keep-alive pings, a reset
after the body was read), listed in a RoutingTable as the wrapper's discovery would list them."""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from common.errors import BadGateway, NotFound, Unavailable
from common.settings import RetrySettings, TimeoutSettings, WrapperSettings
from svc_mgr import Instance, RoutingTable
from tests.support.procs import free_port
from wrapper.hop import Hop

MODEL = "m"
PATH = "/v1/chat/completions"
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def in_order(candidates):
    """A deterministic policy: the first candidate, so a test decides which instance is tried first."""
    return candidates[0]


class Workers:
    """Fake workers on free loopback ports. Each answers with its own status (and Retry-After), and a
    body naming itself; `hits` records which worker got each request, in order."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.times: list[float] = []  # when each hit arrived
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.Server] = []

    def _hit(self, name: str) -> None:
        self.hits.append(name)
        self.times.append(time.monotonic())

    async def start(self, name: str, status: int = 200, retry_after: str | None = None,
                    code: str | None = None) -> Instance:
        """A worker answering `status`; with `code`, an OpenAI error body carrying that code."""
        async def answer(request: web.Request) -> web.Response:
            assert await request.read() == BODY  # the body arrives untouched
            self._hit(name)
            headers = {"Retry-After": retry_after} if retry_after else {}
            body = {"error": {"message": "m", "type": "t", "param": None, "code": code}} if code else \
                {"worker": name, "status": status}
            return web.json_response(body, status=status, headers=headers)

        return await self.start_handler(name, answer)

    async def start_handler(self, name: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Instance:
        app = web.Application()
        app.router.add_post(PATH, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return Instance(id=name, service="svc", address="127.0.0.1", port=port, models=(MODEL,))

    async def start_resetting(self, name: str) -> Instance:
        """A worker that reads the whole request, then closes the connection without answering."""
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            assert match is not None
            await reader.readexactly(int(match.group(1)))
            self._hit(name)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Instance(id=name, service="svc", address="127.0.0.1", port=port, models=(MODEL,))

    @staticmethod
    def refusing(name: str) -> Instance:
        """An instance on a port nothing listens on: the connection is refused."""
        return Instance(id=name, service="svc", address="127.0.0.1", port=free_port(), models=(MODEL,))

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        for server in self._servers:
            server.close()


def settings(max_attempts: int = 3, idle: float = 5.0, **kwargs) -> WrapperSettings:
    return WrapperSettings(max_attempts=max_attempts,
                           timeouts=TimeoutSettings(connect=2.0, first_byte=5.0, idle=idle, total=10.0), **kwargs)


Scenario = Callable[[Workers, RoutingTable, int], Awaitable[None]]


def run(scenario: Scenario, max_attempts: int = 3) -> None:
    async def main() -> None:
        workers = Workers()
        table = RoutingTable(in_order, cooldown=60)
        try:
            await scenario(workers, table, max_attempts)
        finally:
            await workers.stop()
    asyncio.run(main())


async def open_hop(table: RoutingTable, max_attempts: int, **kwargs) -> Hop:
    hop = Hop(table, settings(max_attempts, **kwargs), None)
    await hop.start()
    return hop


def cooled(inst: Instance) -> bool:
    return inst.cooled_until > time.monotonic()


def test_a_503_instance_is_failed_over_and_cooled_down():
    async def scenario(workers, table, max_attempts):
        sick = await workers.start("sick", 503)
        healthy = await workers.start("healthy")
        table.set_service("svc", [sick, healthy])  # `in_order` tries `sick` first
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid-1", whole=True)
            assert (attempt.status, attempt.instance) == (200, healthy)
            assert json.loads(attempt.content) == {"worker": "healthy", "status": 200}
            attempt.close()
            assert workers.hits == ["sick", "healthy"]
            assert cooled(sick) and not cooled(healthy)
            # cooling down: the next request goes straight to the healthy instance
            attempt = await hop.open(MODEL, PATH, BODY, "rid-2", whole=True)
            assert attempt.instance is healthy
            attempt.close()
            assert workers.hits == ["sick", "healthy", "healthy"]
            assert sick.in_flight == healthy.in_flight == 0
        finally:
            await hop.close()
    run(scenario)


def test_a_refused_connection_is_failed_over():
    async def scenario(workers, table, max_attempts):
        gone = workers.refusing("gone")
        healthy = await workers.start("healthy")
        table.set_service("svc", [gone, healthy])
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
            assert (attempt.status, attempt.instance) == (200, healthy)
            assert json.loads(await hop.read(attempt)) == {"worker": "healthy", "status": 200}
            assert workers.hits == ["healthy"]
            assert cooled(gone) and not cooled(healthy)
            assert gone.in_flight == healthy.in_flight == 0
        finally:
            await hop.close()
    run(scenario)


def test_only_refused_connections_are_a_502():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [workers.refusing("a"), workers.refusing("b")])
        hop = await open_hop(table, max_attempts)
        try:
            with pytest.raises(BadGateway) as err:
                await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert (err.value.status, err.value.code) == (502, "worker_unreachable")
        finally:
            await hop.close()
    run(scenario)


def test_when_every_instance_answers_429_the_last_answer_is_passed_on_with_its_retry_after():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("busy-a", 429, retry_after="7"),
                                  await workers.start("busy-b", 429, retry_after="9")])
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert len(workers.hits) == max_attempts  # every attempt was used, instances reused once all tried
            assert set(workers.hits[:2]) == {"busy-a", "busy-b"}  # each instance was tried before any repeat
            last = workers.hits[-1]
            assert attempt.status == 429
            assert attempt.instance.id == last
            assert json.loads(attempt.content) == {"worker": last, "status": 429}
            assert attempt.headers() == {"Retry-After": {"busy-a": "7", "busy-b": "9"}[last]}
            attempt.close()
            assert all(inst.in_flight == 0 for inst in table.instances(MODEL))
        finally:
            await hop.close()
    run(scenario)


def test_an_unknown_model_is_model_not_found():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("healthy")])
        hop = await open_hop(table, max_attempts)
        try:
            with pytest.raises(NotFound) as err:
                await hop.open("no-such-model", PATH, BODY, "rid", whole=True)
            assert (err.value.status, err.value.code, err.value.param) == (404, "model_not_found", "model")
            assert workers.hits == []
        finally:
            await hop.close()
    run(scenario)


def test_a_known_model_without_instances_is_503():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("healthy")])
        table.set_service("svc", [])  # the model was seen, and its last instance went away
        hop = await open_hop(table, max_attempts)
        try:
            with pytest.raises(Unavailable) as err:
                await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert (err.value.status, err.value.code) == (503, "no_healthy_worker")
            assert err.value.headers == {"Retry-After": "1"}
            assert workers.hits == []
        finally:
            await hop.close()
    run(scenario)


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_max_attempts_is_respected(max_attempts):
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start(f"sick-{i}", 503) for i in range(4)])
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert attempt.status == 503  # the last worker answer, passed on
            attempt.close()
            assert workers.hits == [f"sick-{i}" for i in range(max_attempts)]
            assert [cooled(i) for i in table.instances(MODEL)] == [i < max_attempts for i in range(4)]
        finally:
            await hop.close()
    run(scenario, max_attempts)


# ---- a stale instance: 404 model_not_found ----------------------------------------------------------

@pytest.mark.parametrize("whole", [True, False])
def test_a_404_model_not_found_is_failed_over_and_cooled_down(whole):
    """The table said the instance serves the model; its 404 says it does not (a stale registration)."""
    async def scenario(workers, table, max_attempts):
        stale = await workers.start("stale", 404, code="model_not_found")
        healthy = await workers.start("healthy")
        table.set_service("svc", [stale, healthy])
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=whole)
            assert (attempt.status, attempt.instance) == (200, healthy)
            assert json.loads(await hop.read(attempt) if not whole else attempt.content)["worker"] == "healthy"
            attempt.close()
            assert workers.hits == ["stale", "healthy"]
            assert cooled(stale) and not cooled(healthy)
            assert stale.in_flight == healthy.in_flight == 0
        finally:
            await hop.close()
    run(scenario)


def test_other_404s_from_a_worker_pass_through():
    async def scenario(workers, table, max_attempts):
        odd = await workers.start("odd", 404, code="unknown_url")
        healthy = await workers.start("healthy")
        table.set_service("svc", [odd, healthy])
        hop = await open_hop(table, max_attempts)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
            assert (attempt.status, attempt.instance) == (404, odd)
            assert json.loads(attempt.content)["error"]["code"] == "unknown_url"
            attempt.close()
            assert workers.hits == ["odd"]
            assert not cooled(odd)
        finally:
            await hop.close()
    run(scenario)


# ---- answers larger than max_answer_bytes -----------------------------------------------------------

CAP = 64 * 1024


def huge_answer(declare_length: bool):
    """A handler answering 4 MiB of JSON, made as it is sent; with or without a Content-Length."""
    size = 64 * CAP
    piece = b"x" * CAP

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declare_length:
            response.content_length = size
        await response.prepare(request)
        await response.write(b'{"x": "' + piece[7:])
        for _ in range(62):
            await response.write(piece)
        await response.write(piece[:-2] + b'"}')
        return response
    return handler


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_an_answer_over_max_answer_bytes_is_a_failed_attempt(declare_length):
    async def scenario(workers, table, max_attempts):
        huge = await workers.start_handler("huge", huge_answer(declare_length))
        healthy = await workers.start("healthy")
        table.set_service("svc", [huge, healthy])
        hop = await open_hop(table, max_attempts, max_answer_bytes=CAP)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert (attempt.status, attempt.instance) == (200, healthy)
            attempt.close()
            assert cooled(huge)
            table.set_service("svc", [huge])
            with pytest.raises(BadGateway) as err:
                await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert (err.value.status, err.value.code) == (502, "answer_too_large")
            assert huge.in_flight == healthy.in_flight == 0
        finally:
            await hop.close()
    run(scenario)


def test_an_answer_at_max_answer_bytes_is_read_whole():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start_handler("big", huge_answer(False))])
        hop = await open_hop(table, max_attempts, max_answer_bytes=64 * CAP)
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert attempt.status == 200 and len(json.loads(attempt.content)["x"]) == 64 * CAP - 9
            attempt.close()
        finally:
            await hop.close()
    run(scenario)


# ---- keep-alive comments are not progress -----------------------------------------------------------

def streaming(first: bytes, then: bytes, every: float, times: int):
    """A handler streaming `first`, then `then` every `every` seconds, `times` times."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        for _ in range(times):
            await asyncio.sleep(every)
            await response.write(then)
        return response
    return handler


EVENT = b'data: {"choices": []}\n\n'


async def relayed(hop: Hop) -> bytes:
    attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=False)
    return b"".join([chunk async for chunk in hop.stream(attempt)])


def test_comment_only_chunks_do_not_reset_the_idle_timeout():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start_handler("pinger", streaming(EVENT, b": ping\n\n", 0.1, 50))])
        hop = await open_hop(table, max_attempts, idle=0.5)
        try:
            out = await relayed(hop)
            assert out.startswith(EVENT)
            assert b": ping" in out  # relayed, for proxies in front, but not taken as progress
            assert out.count(b": ping") < 50
            assert json.loads(out.rsplit(b"data: ", 1)[1])["error"]["code"] == "idle_timeout"
        finally:
            await hop.close()
    run(scenario)


def test_events_reset_the_idle_timeout():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start_handler("steady", streaming(EVENT, EVENT, 0.1, 10))])
        hop = await open_hop(table, max_attempts, idle=0.5)
        try:
            out = await relayed(hop)
            assert out == EVENT * 11  # 1.1 s in all, more than twice the idle timeout, and no error
        finally:
            await hop.close()
    run(scenario)


# ---- retries: budget, kinds, backoff ----------------------------------------------------------------

NO_BACKOFF = {"backoff_min": 0.0, "backoff_max": 0.0}


def test_retries_stay_within_the_budget():
    """100 requests to an always-503 instance: without a budget 300 hits (3 attempts each); with 20% of
    requests plus a reserve of 1/s over the 10 s window, at most 100 + 20 + 10."""
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("sick", 503)])
        hop = await open_hop(table, max_attempts,
                             retries=RetrySettings(budget=0.2, min_per_second=1.0, **NO_BACKOFF))
        try:
            for _ in range(100):
                attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
                assert attempt.status == 503  # the failure, passed on as it is
                attempt.close()
            assert 100 < len(workers.hits) <= 100 + 20 + 10
        finally:
            await hop.close()
    run(scenario)


@pytest.mark.parametrize("after_send", [True, False])
def test_a_reset_after_the_body_was_sent_is_retried_only_with_after_send(after_send):
    async def scenario(workers, table, max_attempts):
        resetting = await workers.start_resetting("resetting")
        table.set_service("svc", [resetting, await workers.start("healthy")])  # `resetting` first
        hop = await open_hop(table, max_attempts, retries=RetrySettings(after_send=after_send))
        try:
            if after_send:
                attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
                assert attempt.status == 200
                attempt.close()
                assert workers.hits == ["resetting", "healthy"]
            else:
                with pytest.raises(BadGateway) as err:
                    await hop.open(MODEL, PATH, BODY, "rid", whole=True)
                assert err.value.code == "worker_failed"
                assert workers.hits == ["resetting"]  # one hit only: the prompt is not run twice
        finally:
            await hop.close()
    run(scenario)


def test_a_refused_connection_is_not_retried_when_safe_retries_are_off():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [workers.refusing("gone"), await workers.start("healthy")])
        hop = await open_hop(table, max_attempts, retries=RetrySettings(safe=False))
        try:
            with pytest.raises(BadGateway) as err:
                await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            assert err.value.code == "worker_unreachable"
            assert workers.hits == []
        finally:
            await hop.close()
    run(scenario)


def test_the_same_instance_is_tried_again_only_after_a_backoff():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("only", 503)])
        hop = await open_hop(table, max_attempts, retries=RetrySettings(backoff_min=0.2, backoff_max=0.3))
        try:
            attempt = await hop.open(MODEL, PATH, BODY, "rid", whole=True)
            attempt.close()
            assert workers.hits == ["only"] * 3
            gaps = [b - a for a, b in zip(workers.times, workers.times[1:], strict=False)]
            assert min(gaps) >= 0.2
        finally:
            await hop.close()
    run(scenario)
