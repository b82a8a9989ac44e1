"""#13 registry at size, memory: what discovery keeps per instance."""
from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

from common.settings import ConsulSettings, WrapperSettings
from svc_mgr import RoutingTable
from svc_mgr import discovery as discovery_module
from svc_mgr.discovery import Check, Discovery, _NodeService, checks_in, json_list, node_entries_in, seen_in
from svc_mgr.entry import MARKER_TAG, Instance, _Shared, instance_from_health, parse_instance
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


def _peak_bytes(work: Callable[[], object]) -> int:
    """The most memory Python held at once while `work` ran, above what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _checks_answer(count: int) -> bytes:
    return orjson.dumps([{"Node": "n1", "CheckID": f"check-{i}", "Status": "passing", "Output": "HTTP GET: 200 OK",
                          "ServiceID": f"svc-{i}", "ServiceName": "svc", "ServiceTags": [MARKER_TAG, "model=m1"],
                          "CreateIndex": 1000 + i} for i in range(count)])


def test_a_checks_answer_is_read_one_check_at_a_time() -> None:
    """Decoded whole, an answer's checks are all alive at once and fill fresh heap pages, which the few objects
    that outlive the answer then keep (docs/performance.md, "#13 memory: allocation order")."""
    raw = _checks_answer(2000)
    last = seen_in(checks_in(raw))
    whole = _peak_bytes(lambda: msgspec.json.decode(raw, type=list[Check]))
    assert _peak_bytes(lambda: seen_in(checks_in(raw), last)) < whole / 2


def test_an_unchanged_instance_keeps_the_last_answers_objects_and_a_new_one_shares_its_strings() -> None:
    raw = _checks_answer(3)
    last = seen_in(checks_in(raw))
    now = seen_in(checks_in(_checks_answer(4)), last)
    for key, value in last.items():
        [(key_now, value_now)] = [(k, v) for k, v in now.items() if k == key]
        assert key_now is key and value_now is value
    [new] = [key for key in now if key not in last]
    old = next(iter(last))
    assert new[0] is old[0] and now[new][0] is last[old][0] and now[new][1][1] is last[old][1][1]  # node, service, tags


def test_a_nodes_services_are_read_one_at_a_time() -> None:
    class WholeNode(msgspec.Struct):
        Node: dict[str, Any]
        Services: list[_NodeService]

    raw = orjson.dumps({"Node": {"Node": "n1", "Address": "10.0.0.1"},
                        "Services": [{"ID": f"svc-{i}", "Service": "svc", "Tags": [MARKER_TAG, "model=m1"],
                                      "Address": "10.0.0.1", "Port": 9000 + i % 1000, "Meta": {}}
                                     for i in range(2000)]})
    whole = _peak_bytes(lambda: msgspec.json.decode(raw, type=WholeNode))
    assert _peak_bytes(lambda: deque(node_entries_in(raw), maxlen=0)) < whole / 2
    assert [e["Service"]["ID"] for e in node_entries_in(raw)] == [f"svc-{i}" for i in range(2000)]


class _Tracked(list):  # type: ignore[type-arg]
    """A decoded read's entries, as a list that can be watched with a weak reference."""

    __slots__ = ("__weakref__",)


def test_a_service_read_whole_is_made_into_instances_before_the_next_read_is_decoded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Services routed by the services watch (no check yet): each read's entries go before the next read's are
    kept; made after all reads, the instances were made among all reads' entries and pinned their pages."""
    alive: list[weakref.ref[_Tracked]] = []
    most = 0

    def decode(raw: bytes) -> list[Any]:
        entries = _Tracked(json_list(raw))
        alive.append(weakref.ref(entries))
        return entries

    def read_entry(entry: Any) -> Instance | None:
        nonlocal most
        most = max(most, sum(ref() is not None for ref in alive))
        return instance_from_health(entry)

    async def scenario() -> None:
        consul = ScriptedConsul()
        table = RoutingTable()
        discovery = Discovery(ConsulSettings(), table, WrapperSettings())
        discovery._consul = consul  # type: ignore[assignment]
        discovery.read_entry = read_entry  # type: ignore[assignment]
        await discovery._apply(answer([check("n1")], 10), False)
        discovery._checks_read.set()
        for name in ("a", "b", "c"):
            consul.bodies[f"/v1/health/service/{name}"] = [health_entry("n1", f"{name}-1", TAGS, 11)]
        await discovery._apply_services(answer({name: TAGS for name in ("a", "b", "c")}, 11), False)
        assert len(table.instances("m")) == 3

    monkeypatch.setattr(discovery_module, "json_list", decode)
    asyncio.run(scenario())
    assert len(alive) == 3 and most == 1


def test_instances_claiming_the_same_models_and_port_share_one_tuple_and_one_int() -> None:
    a, b = parse_instance(_entry(9000)), parse_instance(_entry(9000))  # decoded apart: equal, not the same
    assert a is not None and b is not None
    assert a.models is b.models and a.port is b.port


def test_what_is_shared_is_forgotten_once_it_outgrows_its_limit() -> None:
    shared: _Shared[tuple[str, ...]] = _Shared(2)
    kept, first = tuple(["m1"]), tuple(["m1"])  # equal, two objects
    assert shared(kept) is kept and shared(first) is kept  # the first equal value read is kept
    shared(tuple(["m2"]))
    shared(tuple(["m3"]))  # a third: the two before are let go
    assert shared(first) is first


def test_the_table_makes_no_object_per_instance_beyond_its_index() -> None:
    """The table's index of each model's list held a (model, service, id) tuple per instance and model."""
    instances = [Instance(id=f"svc-{i}", service="svc", address="10.0.0.1", port=9000, models=("m1",))
                 for i in range(1000)]
    table = RoutingTable()
    gc.collect()  # empties the free lists of tuples, so that every tuple made is counted
    tracemalloc.start()
    try:
        table.update({"svc": instances})
        routing_file = sys.modules[RoutingTable.__module__].__file__
        assert routing_file is not None
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, routing_file)])
    finally:
        tracemalloc.stop()
    blocks = sum(stat.count for stat in snapshot.statistics("filename"))
    assert len(table.instances("m1")) == 1000 and blocks < 1000  # the indexes (ints above 256) and the lists
    table.update({"svc": instances[1:]})
    table.update({"svc": instances[:1]})
    assert table.instances("m1") == instances[:1]
