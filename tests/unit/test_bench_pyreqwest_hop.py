"""bench/pyreqwest_hop.py (issue #13's client candidate) keeps the Hop's behaviour: every test of
tests/unit/test_hop.py (failover, cool-down, the retry budget, timeouts, the answer cap, keep-alive pings,
resets) runs again here with the Hop's aiohttp client replaced by pyreqwest (for every answer, and for the
JSON answers only), against the same in-process fake workers. So the bench's "wrapper with pyreqwest" row measures the same features as the `wrapper` row."""
from __future__ import annotations

import pytest

import tests.unit.test_hop as hop_tests
from bench.pyreqwest_hop import JsonPyreqwestHop, PyreqwestHop
from tests.unit.test_hop import *  # noqa: F403  (the Hop's tests, collected again with this module's fixture)


@pytest.fixture(autouse=True, params=[PyreqwestHop, JsonPyreqwestHop])
def pyreqwest_client(monkeypatch, request):
    async def open_hop(table, max_attempts, **kwargs):
        hop = request.param(table, hop_tests.settings(max_attempts, **kwargs), None)
        await hop.start()
        return hop

    monkeypatch.setattr(hop_tests, "open_hop", open_hop)


def test_the_hop_under_test_is_the_pyreqwest_one():
    async def scenario(workers, table, max_attempts):
        table.set_service("svc", [await workers.start("healthy")])
        hop = await hop_tests.open_hop(table, max_attempts)
        try:
            assert isinstance(hop, PyreqwestHop)
            attempt = await hop.open(hop_tests.MODEL, hop_tests.PATH, hop_tests.BODY, "rid", whole=True)
            assert (attempt.status, attempt.content_type) == (200, "application/json; charset=utf-8")
            attempt.close()
        finally:
            await hop.close()
    hop_tests.run(scenario)
