"""The routing table and its policies, in process."""
from __future__ import annotations

import collections

from svc_mgr import Instance, RoutingTable
from svc_mgr.entry import instance_from_health, model_tags, models_from_tags
from svc_mgr.routing import pick_least_in_flight, pick_random


def inst(i: int, models=("m",), service="svc") -> Instance:
    return Instance(id=f"{service}-{i}", service=service, address="127.0.0.1", port=9000 + i, models=tuple(models))


def test_tags_round_trip_and_foreign_services_are_ignored():
    tags = model_tags(["a", "b=c"])
    assert models_from_tags(tags) == ("a", "b=c")
    entry = {"Service": {"ID": "x-1", "Service": "x", "Address": "10.0.0.1", "Port": 1, "Tags": tags}}
    assert instance_from_health(entry).base_url == "http://10.0.0.1:1"
    assert instance_from_health({"Service": {"ID": "y", "Service": "y", "Port": 2, "Tags": ["web"]}}) is None


def test_models_map_to_instances_across_services():
    table = RoutingTable()
    table.set_service("a", [inst(1, ("m1", "m2"), "a")])
    table.set_service("b", [inst(2, ("m2",), "b")])
    assert table.models() == ["m1", "m2"]
    assert {i.id for i in table.instances("m2")} == {"a-1", "b-2"}
    table.set_service("a", [])
    assert table.models() == ["m2"]
    assert "m1" in table.known_models and table.pick("m1") is None


def test_updates_keep_in_flight_counts():
    table = RoutingTable()
    first = inst(1)
    table.set_service("svc", [first])
    first.in_flight = 3
    table.set_service("svc", [inst(1), inst(2)])
    assert table.pick("m", exclude=[table.instances("m")[1]]).in_flight == 3


def test_random_spreads_over_all_instances():
    table = RoutingTable(pick_random)
    table.set_service("svc", [inst(i) for i in range(4)])
    counts = collections.Counter(table.pick("m").id for _ in range(400))
    assert set(counts) == {f"svc-{i}" for i in range(4)}


def test_least_in_flight_prefers_the_idle_instance():
    busy, idle = inst(1), inst(2)
    busy.in_flight = 10
    assert all(pick_least_in_flight([busy, idle]) is idle for _ in range(50))
    assert pick_least_in_flight([busy]) is busy


def test_cooled_down_instances_are_used_only_when_alone():
    table = RoutingTable(pick_random, cooldown=60)
    a, b = inst(1), inst(2)
    table.set_service("svc", [a, b])
    table.cool_down(a)
    assert all(table.pick("m") is b for _ in range(50))
    table.cool_down(b)
    assert {table.pick("m").id for _ in range(100)} == {"svc-1", "svc-2"}
