"""Discovery's decisions in process: what a checks answer means, what to read, what to hold back, what to
update. The real agent is in tests/e2e/test_discovery_scale.py; here Consul's answers are written by hand
in the shapes Consul 1.8.7 gives them (checked with curl against the agent)."""
from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from common.settings import ConsulSettings, WrapperSettings
from svc_mgr import Instance, RoutingTable
from svc_mgr.consul_client import Answer, ConsulException, connect
from svc_mgr.discovery import (
    NODE_READ_ABOVE,
    Discovery,
    EmptyCatalogGrace,
    checks_in,
    node_entries_in,
    plan_reads,
    seen_in,
)
from svc_mgr.entry import MARKER_TAG, instance_from_health, model_tags


def check(node: str, service_id: str = "", status: str = "passing", created: int = 5, modified: int = 10,
          tags: list[str] | None = None) -> dict:
    service = service_id.rsplit("-", 1)[0]
    return {"Node": node, "CheckID": f"c-{service_id or node}", "Status": status, "ServiceID": service_id,
            "ServiceName": service, "ServiceTags": tags if tags is not None else (model_tags([service]) if service_id
                                                                                 else []),
            "CreateIndex": created, "ModifyIndex": modified}


def test_an_instance_passes_only_if_all_its_checks_and_its_node_pass():
    seen = seen_in(checks_in(orjson.dumps([
        check("n1"), check("n1", "a-1"), check("n1", "b-1"), check("n1", "b-1", "warning", created=7),
        check("n2", status="critical"), check("n2", "a-2", modified=99),
        check("n1", "web-1", tags=["web"]),  # not ours
    ])))
    a, b = tuple(model_tags(["a"])), tuple(model_tags(["b"]))
    assert seen == {("n1", "a-1"): ("a", (5, a), True), ("n1", "b-1"): ("b", (7, b), False),
                    ("n2", "a-2"): ("a", (5, a), False)}


def test_many_instances_of_one_node_are_read_by_node_and_a_few_by_service():
    crowded = [("big", f"s{i}-1") for i in range(NODE_READ_ABOVE + 1)]
    lonely = [("small", "x-1"), ("other", "x-2")]
    seen = {key: (key[1].rsplit("-", 1)[0], (1, ()), True) for key in crowded + lonely}
    assert plan_reads(crowded + lonely, seen) == ({"big"}, {"x"})


def test_a_node_answer_reads_like_a_health_answer():
    node = {"Node": "n1", "Address": "10.0.0.9"}
    answer = {"Node": node, "Services": [
        {"ID": "a-1", "Service": "a", "Tags": model_tags(["m"]), "Address": "", "Port": 7},
        {"ID": "b-1", "Service": "b", "Tags": model_tags(["n"]), "Address": "10.0.0.1", "Port": 8}]}
    instances = [instance_from_health(e) for e in node_entries_in(orjson.dumps(answer))]
    assert [(i.base_url, i.models) for i in instances if i] == [("http://10.0.0.9:7", ("m",)),
                                                                ("http://10.0.0.1:8", ("n",))]
    assert list(node_entries_in(orjson.dumps({"Node": None, "Services": None}))) == []  # an unknown node


def test_an_empty_catalog_is_held_only_when_suspicious_and_only_for_the_grace_period(caplog):
    grace = EmptyCatalogGrace(30)
    with caplog.at_level(logging.INFO, "svc_mgr.discovery"):
        assert not grace.hold(True, True, None, now=0)  # the last worker left while we watched
        assert not grace.hold(True, False, "since Consul came back", now=0)  # nothing to keep
        assert grace.hold(True, True, "since Consul came back", now=100)
        assert grace.hold(True, True, None, now=110) and grace.remaining(110) == 20
        assert not grace.hold(True, True, None, now=130)  # over: Consul's word is applied
        assert grace.remaining(131) is None
        assert grace.hold(True, True, "since Consul came back", now=200)
        assert not grace.hold(False, True, None, now=201)  # entries are back
    messages = [r.getMessage() for r in caplog.records]
    assert sum("keeping the last routing table" in m for m in messages) == 2  # once per episode
    assert sum("stayed empty" in m for m in messages) == 1
    assert sum("back in Consul's catalog" in m for m in messages) == 1
    assert not EmptyCatalogGrace(0).hold(True, True, "since Consul came back", now=0)


def test_a_bulk_update_keeps_in_flight_counts():
    table = RoutingTable()
    first = Instance(id="a-1", service="a", address="127.0.0.1", port=1, models=("m",))
    table.update({"a": [first], "b": [Instance(id="b-1", service="b", address="127.0.0.1", port=2, models=("n",))]})
    first.in_flight = 2
    table.update({"a": [Instance(id="a-1", service="a", address="127.0.0.1", port=1, models=("m",))]}, ["b"])
    assert table.models() == ["m"] and table.instances("m")[0].in_flight == 2


class ScriptedConsul:
    """Answers Discovery's reads from a dict (path -> body), and records them."""

    def __init__(self) -> None:
        self.bodies: dict[str, object] = {}
        self.reads: list[str] = []

    async def read(self, path: str, index: int | None = None, wait: str | None = None,
                   params: dict[str, str] | None = None) -> Answer:
        self.reads.append(path)
        return Answer(index=1, raw=orjson.dumps(self.bodies.get(path)), filtered_by_acls=False)


class RecordingTable(RoutingTable):
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[set[str], list[str]]] = []

    def update(self, changed, dropped=()) -> None:
        self.updates.append((set(changed), list(dropped)))
        super().update(changed, dropped)


def service_entry(node: str, service: str, i: int, port: int = 9001) -> dict:
    return {"Node": {"Node": node, "Address": "127.0.0.1"},
            "Service": {"ID": f"{service}-{i}", "Service": service, "Tags": [MARKER_TAG, f"model={service}"],
                        "Address": "", "Port": port}}


def test_a_change_reads_and_updates_only_what_changed():
    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RecordingTable()
        updates = table.updates
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        services = [f"s{k}" for k in range(20)]
        consul.bodies["/v1/catalog/node-services/n1"] = {
            "Node": {"Node": "n1", "Address": "127.0.0.1"},
            "Services": [service_entry("n1", s, 1)["Service"] for s in services]}
        checks = [check("n1")] + [check("n1", f"{s}-1") for s in services]

        async def answer(body: list[dict], reconnected: bool = False) -> None:
            consul.reads.clear()
            await discovery._apply(Answer(index=1, raw=orjson.dumps(body), filtered_by_acls=False), reconnected)

        await answer(checks)
        assert consul.reads == ["/v1/catalog/node-services/n1"]  # 20 instances of one node: one read
        assert table.models() == sorted(services) and updates[-1] == (set(services), [])

        updates.clear()
        await answer(checks)
        assert consul.reads == [] and updates == []  # the same answer again: nothing to do

        flipped = [c if c["ServiceID"] != "s3-1" else check("n1", "s3-1", "critical", modified=11) for c in checks]
        await answer(flipped)
        assert consul.reads == [] and updates == [(set(), ["s3"])]  # a state change needs no address read
        assert "s3" not in table.models() and len(table.models()) == 19

        updates.clear()
        moved = [c if c["ServiceID"] != "s4-1" else check("n1", "s4-1", created=12, modified=12) for c in flipped]
        consul.bodies["/v1/health/service/s4"] = [service_entry("n1", "s4", 1, port=9002)]  # registered again
        await answer(moved)
        assert consul.reads == ["/v1/health/service/s4"] and updates == [({"s4"}, [])]
        assert table.instances("s4")[0].port == 9002

        updates.clear()
        full = [c for c in moved if c["ServiceID"] != "s5-1"]
        await answer(full)  # s5 deregistered
        assert consul.reads == [] and updates == [(set(), ["s5"])]

        updates.clear()
        await answer([])  # not even a node check: a token that lost its rights; held
        await answer(full)  # back
        await answer([check("n1")], reconnected=True)  # a restarted agent: empty, held
        await answer(full)  # back
        assert updates == [] and len(table.models()) == 18
        await answer([check("n1")])  # every worker left while we watched: applied at once
        assert table.models() == [] and [(c, sorted(d)) for c, d in updates] == [(set(), sorted(set(services) - {"s3", "s5"}))]

    asyncio.run(scenario())


def test_the_raw_read_keeps_consuls_index_wait_token_and_stale_semantics():
    async def scenario() -> None:
        asked: list[web.Request] = []

        async def answer(request: web.Request) -> web.Response:
            asked.append(request)
            if request.path.endswith("/broken"):
                return web.Response(status=500, text="rpc error")
            return web.Response(body=b'[{"a": 1}]', content_type="application/json",
                                headers={"X-Consul-Index": "42", "X-Consul-Results-Filtered-By-ACLs": "true"})

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        consul = connect(ConsulSettings(port=runner.addresses[0][1], token=SecretStr("t0ken"), stale=True))
        try:
            got = await consul.read("/v1/health/state/any", index=7, wait="3s", params={"filter": '"x" in ServiceTags'})
            assert (got.index, got.json(), got.filtered_by_acls) == (42, [{"a": 1}], True)
            query, headers = asked[-1].query, asked[-1].headers
            assert dict(query) == {"index": "7", "wait": "3s", "filter": '"x" in ServiceTags', "stale": "1"}
            assert headers["X-Consul-Token"] == "t0ken" and headers["Accept-Encoding"] == "identity"
            await consul.read("/v1/catalog/node-services/n1")
            assert "index" not in asked[-1].query  # not a blocking query
            with pytest.raises(ConsulException, match="500 from GET /v1/broken: rpc error"):
                await consul.read("/v1/broken")
        finally:
            await consul.close()
            await runner.cleanup()

    asyncio.run(scenario())


def test_tagged_services_without_checked_instances_are_read_whole_from_the_services_watch():
    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RecordingTable()
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        consul.bodies["/v1/health/service/s0"] = [service_entry("n1", "s0", 1)]
        consul.bodies["/v1/health/service/plain"] = [service_entry("n2", "plain", 1, port=7000)]

        def services(body: dict) -> Answer:
            return Answer(index=1, raw=orjson.dumps(body), filtered_by_acls=False)

        await discovery._apply(Answer(index=1, raw=orjson.dumps([check("n1"), check("n1", "s0-1")]),
                                      filtered_by_acls=False), False)
        discovery._checks_read.set()
        consul.reads.clear()
        tagged = {"s0": [MARKER_TAG], "plain": [MARKER_TAG, "model=plain"], "web": ["http"]}
        await discovery._apply_services(services(tagged), False)
        assert consul.reads == ["/v1/health/service/plain"]  # s0 has checks: the other watch routes it
        assert table.models() == ["plain", "s0"] and table.instances("plain")[0].port == 7000

        table.updates.clear()
        await discovery._apply_services(services(tagged), False)
        assert table.updates == []  # read again, unchanged: the table is left alone

        discovery.grace.since = 0.0  # an empty catalog is being held back: nothing is dropped meanwhile
        await discovery._apply_services(services({}), True)
        assert table.models() == ["plain", "s0"]
        discovery.grace.since = None
        await discovery._apply_services(services({"s0": [MARKER_TAG]}), False)
        assert table.models() == ["s0"]

    asyncio.run(scenario())


def test_the_failing_checks_watch_flips_instances_at_once_and_the_newer_answer_decides():
    """The small failing-checks answer takes an instance out (and back) before the whole answer follows; an
    older answer of either watch never overrides a newer one's states."""
    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RecordingTable()
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        consul.bodies["/v1/catalog/node-services/n1"] = {
            "Node": {"Node": "n1", "Address": "127.0.0.1"},
            "Services": [service_entry("n1", f"s{k}", 1)["Service"] for k in range(10)]}
        checks = [check("n1")] + [check("n1", f"s{k}-1") for k in range(10)]

        def answer(body: list[dict], index: int) -> Answer:
            return Answer(index=index, raw=orjson.dumps(body), filtered_by_acls=False)

        await discovery._apply(answer(checks, 10), False)
        assert len(table.models()) == 10
        consul.reads.clear()
        await discovery._apply_failing(answer([check("n1", "s3-1", "critical")], 11), False)
        assert "s3" not in table.models() and consul.reads == []  # out at once, nothing read
        await discovery._apply(answer(checks, 9), False)  # an older whole answer: s3 stays out
        assert "s3" not in table.models()
        await discovery._apply_failing(answer([check("n1", status="critical")], 12), False)
        assert table.models() == []  # the node fails: all its instances
        await discovery._apply_failing(answer([], 13), False)
        assert len(table.models()) == 10  # all pass again
        await discovery._apply(answer([c if c["ServiceID"] != "s1-1" else check("n1", "s1-1", "warning")
                                       for c in checks], 14), False)
        await discovery._apply_failing(answer([], 13), False)  # older than the whole answer: ignored
        assert "s1" not in table.models() and len(table.models()) == 9

    asyncio.run(scenario())


def test_a_few_new_instances_of_a_service_are_read_by_id_and_odd_ids_fall_back_to_the_whole_service():
    from svc_mgr.discovery import IDS_PER_READ, service_filter

    assert service_filter({"b-2", "a-1"}) == (f'"{MARKER_TAG}" in Service.Tags and '
                                              '(Service.ID == "a-1" or Service.ID == "b-2")')
    whole = f'"{MARKER_TAG}" in Service.Tags'
    assert service_filter({f"x-{i}" for i in range(IDS_PER_READ + 1)}) == whole
    assert service_filter({'x" or 1 == 1 or "'}) == whole  # nothing quoted into the expression unescaped
