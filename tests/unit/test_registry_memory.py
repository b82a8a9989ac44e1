"""#13 registry at size, memory: what discovery keeps per instance."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson

from common.settings import ConsulSettings, WrapperSettings
from svc_mgr import RoutingTable
from svc_mgr.discovery import Discovery, checks_in, seen_in
from svc_mgr.entry import MARKER_TAG, parse_instance
from tests.unit.test_discovery_new_tags import TAGS, ScriptedConsul, answer, check, health_entry


def _entry(port: int) -> dict[str, Any]:
    # decoded from bytes, as from Consul's answer: every string a new object
    return orjson.loads(orjson.dumps({"Node": {"Node": "n1", "Address": "10.0.0.1"},
                                      "Service": {"ID": f"svc-10.0.0.1-{port}", "Service": "svc", "Port": port,
                                                  "Address": "10.0.0.1", "Tags": [MARKER_TAG, "model=m1"]}}))


def test_instances_share_their_service_model_and_address_strings() -> None:
    a, b = parse_instance(_entry(8001)), parse_instance(_entry(8002))
    assert a is not None and b is not None
    assert a.service is b.service and a.models[0] is b.models[0] and a.address is b.address


def test_seen_shares_service_names_across_instances() -> None:
    raw = orjson.dumps([{"Node": "n1", "Status": "passing", "ServiceID": f"svc-{i}", "ServiceName": "svc",
                         "ServiceTags": [MARKER_TAG, "model=m1"], "CreateIndex": i} for i in range(3)])
    services = [service for service, _, _ in seen_in(checks_in(raw)).values()]
    assert services == ["svc"] * 3 and services[0] is services[1] is services[2]


def test_a_service_routed_before_its_checks_is_held_once_by_the_book_and_the_table() -> None:
    """A new service is first routed by the services watch (read whole), then by the checks answer with an
    instance read again: the table keeps its object, and the book must hold that one, not a second copy."""
    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RoutingTable()
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        await discovery._apply(answer([check("n1")], 10), False)  # a node check, no instance yet
        discovery._checks_read.set()
        consul.bodies["/v1/health/service/s"] = [health_entry("n1", "s-1", TAGS, 11)]
        await discovery._apply_services(answer({"s": TAGS}, 11), False)
        routed = table.instances("m")[0]
        await discovery._apply(answer([check("n1"), check("n1", "s-1", 11, TAGS)], 12), False)
        assert table.instances("m") == [routed]
        [(booked, passing)] = discovery.registered()
        assert passing and booked is routed

    asyncio.run(scenario())


def test_an_instance_read_for_its_address_keeps_the_id_string_of_the_checks_answer() -> None:
    async def scenario() -> None:
        consul = ScriptedConsul()
        discovery = Discovery(ConsulSettings(), RoutingTable(), WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        consul.bodies["/v1/health/service/s"] = [health_entry("n1", "s-1", TAGS, 5)]
        await discovery._apply(answer([check("n1"), check("n1", "s-1", 5, TAGS)], 10), False)
        [(booked, _)] = discovery.registered()
        [key] = discovery._seen
        assert booked.id is key[1]  # one string for the key and the instance, not a copy per read

    asyncio.run(scenario())


def test_a_new_checks_answer_keeps_the_objects_of_instances_that_did_not_change() -> None:
    """What discovery keeps of an unchanged instance stays the object it kept before, so that each answer's own
    objects all go when it does (kept ones, made while it was decoded, would pin its pages of the heap)."""
    async def scenario() -> None:
        consul = ScriptedConsul()
        discovery = Discovery(ConsulSettings(), RoutingTable(), WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        consul.bodies["/v1/health/service/s"] = [health_entry("n1", "s-1", TAGS, 5),
                                                 health_entry("n1", "s-2", TAGS, 6, port=9002)]
        await discovery._apply(answer([check("n1"), check("n1", "s-1", 5, TAGS)], 10), False)
        [(key, value)] = discovery._seen.items()
        await discovery._apply(answer([check("n1"), check("n1", "s-1", 5, TAGS), check("n1", "s-2", 6, TAGS)], 11),
                               False)
        assert len(discovery._seen) == 2 and len(discovery.registered()) == 2
        [(key_now, value_now)] = [(k, v) for k, v in discovery._seen.items() if k == key]
        assert key_now is key and value_now is value

    asyncio.run(scenario())
