"""#13: a registration that brings a checked service a new tag (a worker with a new model) is routed from the
services watch's small answer and one filtered read, before Consul writes the whole checks answer; whole
answers older than that read keep it, a newer one decides. Consul's answers are written by hand in the
shapes Consul 1.8.7 gives them."""
from __future__ import annotations

import asyncio

import orjson

from common.settings import ConsulSettings, WrapperSettings
from svc_mgr import RoutingTable
from svc_mgr.consul_client import Answer
from svc_mgr.discovery import Discovery, new_tags, new_tags_filter
from svc_mgr.entry import MARKER_TAG

TAGS = [MARKER_TAG, "model=m"]


def check(node: str, service_id: str = "", created: int = 5, tags: list[str] | None = None) -> dict:
    return {"Node": node, "CheckID": f"c-{service_id or node}", "Status": "passing", "ServiceID": service_id,
            "ServiceName": service_id.rsplit("-", 1)[0] if service_id else "", "ServiceTags": tags or [],
            "CreateIndex": created, "ModifyIndex": created}


def health_entry(node: str, service_id: str, tags: list[str], created: int, port: int = 9001) -> dict:
    return {"Node": {"Node": node, "Address": "127.0.0.1"},
            "Service": {"ID": service_id, "Service": service_id.rsplit("-", 1)[0], "Tags": tags, "Address": "",
                        "Port": port},
            "Checks": [check(node), check(node, service_id, created, tags)]}


class ScriptedConsul:
    """Answers reads from a dict (path -> body) at a given index, and records (path, filter)."""

    def __init__(self) -> None:
        self.bodies: dict[str, object] = {}
        self.index = 1
        self.reads: list[tuple[str, str]] = []

    async def read(self, path: str, index: int | None = None, wait: str | None = None,
                   params: dict[str, str] | None = None) -> Answer:
        self.reads.append((path, (params or {}).get("filter", "")))
        return Answer(index=self.index, raw=orjson.dumps(self.bodies.get(path)), filtered_by_acls=False)


def answer(body: object, index: int) -> Answer:
    return Answer(index=index, raw=orjson.dumps(body), filtered_by_acls=False)


def test_an_instance_with_a_new_model_is_routed_from_the_services_answer_and_kept_against_older_answers():
    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RoutingTable()
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        consul.bodies["/v1/health/service/s"] = [health_entry("n1", "s-1", TAGS, 5)]
        whole = [check("n1"), check("n1", "s-1", 5, TAGS)]
        await discovery._apply(answer(whole, 10), False)
        discovery._checks_read.set()  # what the checks watch does after its first answer
        await discovery._apply_services(answer({"s": TAGS}, 10), False)
        assert table.models() == ["m"]

        # s-2 registers with a new model: the services answer shows the tag, one filtered read routes it
        new = [*TAGS, "model=new"]
        consul.bodies["/v1/health/service/s"] = [health_entry("n1", "s-2", new, 12, port=9002)]
        consul.index = 12
        consul.reads.clear()
        await discovery._apply_services(answer({"s": new}, 12), False)
        assert consul.reads == [("/v1/health/service/s", new_tags_filter(frozenset({"model=new"})))]
        assert table.models() == ["m", "new"] and table.instances("new")[0].port == 9002

        consul.reads.clear()
        await discovery._apply(answer(whole, 11), False)  # a whole answer older than the read: s-2 stays
        assert table.models() == ["m", "new"] and len(table.instances("m")) == 2
        with_new = [*whole, check("n1", "s-2", 12, new)]
        await discovery._apply(answer(with_new, 12), False)  # the whole answer agrees: nothing to read again
        assert consul.reads == [] and table.models() == ["m", "new"]
        await discovery._apply(answer(whole, 13), False)  # deregistered: a newer answer decides
        assert table.models() == ["m"]

    asyncio.run(scenario())


def test_only_gained_tags_that_are_safe_to_quote_are_read():
    before = {"a": frozenset(TAGS), "b": frozenset(TAGS)}
    now = {"a": frozenset([*TAGS, "model=x"]), "b": frozenset([*TAGS, 'model=" or 1 == 1 or "']),
           "c": frozenset([*TAGS, "model=y"])}  # c is new: the services watch routes it whole
    assert new_tags(before, now) == {"a": frozenset({"model=x"})}
    assert new_tags(before, {"a": frozenset({MARKER_TAG})}) == {}  # a tag lost: the whole answer says so
