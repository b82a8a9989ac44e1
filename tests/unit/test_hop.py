"""wrapper.hop.Hop's failover decisions, in process: small aiohttp servers inside the test's event loop stand
in for workers (healthy, 503, 429 with Retry-After), listed in a RoutingTable as the wrapper's discovery
would list them."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from common.errors import BadGateway, NotFound, Unavailable
from common.settings import TimeoutSettings, WrapperSettings
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
        self._runners: list[web.AppRunner] = []

    async def start(self, name: str, status: int = 200, retry_after: str | None = None) -> Instance:
        async def answer(request: web.Request) -> web.Response:
            assert await request.read() == BODY  # the body arrives untouched
            self.hits.append(name)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.json_response({"worker": name, "status": status}, status=status, headers=headers)

        app = web.Application()
        app.router.add_post(PATH, answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return Instance(id=name, service="svc", address="127.0.0.1", port=port, models=(MODEL,))

    @staticmethod
    def refusing(name: str) -> Instance:
        """An instance on a port nothing listens on: the connection is refused."""
        return Instance(id=name, service="svc", address="127.0.0.1", port=free_port(), models=(MODEL,))

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


def settings(max_attempts: int = 3) -> WrapperSettings:
    return WrapperSettings(max_attempts=max_attempts,
                           timeouts=TimeoutSettings(connect=2.0, first_byte=5.0, idle=5.0, total=10.0))


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


async def open_hop(table: RoutingTable, max_attempts: int) -> Hop:
    hop = Hop(table, settings(max_attempts), None)
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
