"""Stale catalog reads with a bound (consul.max_stale): an in-process HTTP server plays Consul, answering
with the headers Consul 1.8.7 sends (X-Consul-LastContact in ms, X-Consul-KnownLeader). The real cluster is
in tests/e2e/test_cluster.py."""
from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from common.settings import ConfigError, ConsulSettings, load_settings
from svc_mgr.consul_client import connect


def _ask(settings: dict, stale_headers: dict[str, str], leader: bool = True, reads: int = 1
         ) -> tuple[list[dict[str, str]], bytes]:
    """The queries `reads` reads of the checks sent, and the last answer. A stale query is answered with
    `stale_headers`; any other from "the leader" (leader=False: a 500, as Consul without a leader)."""
    async def scenario() -> tuple[list[dict[str, str]], bytes]:
        asked: list[dict[str, str]] = []

        async def answer(request: web.Request) -> web.Response:
            asked.append(dict(request.query))
            if "stale" in request.query:
                return web.Response(body=b'["follower"]', headers={"X-Consul-Index": "40", **stale_headers})
            if not leader:
                return web.Response(status=500, text="No cluster leader")
            return web.Response(body=b'["leader"]', headers={"X-Consul-Index": "42", "X-Consul-LastContact": "0",
                                                              "X-Consul-KnownLeader": "true"})

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        consul = connect(ConsulSettings(port=runner.addresses[0][1], **settings))
        try:
            for _ in range(reads):
                got = await consul.read("/v1/health/state/any", index=7, wait="3s", params={"filter": "f"})
            return asked, got.raw
        finally:
            await consul.close()
            await runner.cleanup()

    return asyncio.run(scenario())


def test_a_stale_answer_within_the_bound_is_used_as_is():
    asked, raw = _ask({"stale": True, "max_stale": 2.0},
                      {"X-Consul-LastContact": "1500", "X-Consul-KnownLeader": "true"})
    assert asked == [{"index": "7", "wait": "3s", "filter": "f", "stale": "1"}] and raw == b'["follower"]'


def test_an_answer_staler_than_the_bound_is_read_again_from_the_leader_without_blocking():
    asked, raw = _ask({"stale": True, "max_stale": 2.0},
                      {"X-Consul-LastContact": "2500", "X-Consul-KnownLeader": "true"})
    assert asked == [{"index": "7", "wait": "3s", "filter": "f", "stale": "1"}, {"filter": "f"}]
    assert raw == b'["leader"]'


def test_an_answer_from_a_server_that_knows_no_leader_is_read_again():
    asked, raw = _ask({"stale": True, "max_stale": 2.0},
                      {"X-Consul-LastContact": "10", "X-Consul-KnownLeader": "false"})
    assert len(asked) == 2 and "stale" not in asked[1] and raw == b'["leader"]'


def test_without_stale_every_read_goes_to_the_leader_once():
    asked, raw = _ask({"stale": False}, {})
    assert asked == [{"index": "7", "wait": "3s", "filter": "f"}] and raw == b'["leader"]'


def test_stale_reads_with_a_bound_are_the_default():
    defaults = ConsulSettings()
    assert defaults.stale and defaults.max_stale == 5.0


def test_without_a_leader_the_stale_answer_is_used_and_that_is_logged_once(caplog):
    """Once no leader answered, answers of servers that know none are used without asking again."""
    with caplog.at_level(logging.WARNING, "svc_mgr.consul_client"):
        asked, raw = _ask({"stale": True}, {"X-Consul-LastContact": "9000", "X-Consul-KnownLeader": "false"},
                          leader=False, reads=2)
    assert len(asked) == 3 and raw == b'["follower"]'  # the second read does not ask the leader again
    assert [r.getMessage() for r in caplog.records] == [
        "no Consul leader answered (500 from GET /v1/health/state/any: No cluster leader); using the servers' "
        "stale answers until one does"]


def test_a_bad_bound_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("consul:\n  max_stale: 0\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'consul.max_stale': Input should be greater than 0"):
        load_settings(path, environ={})
