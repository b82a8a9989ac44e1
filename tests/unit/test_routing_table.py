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


def test_incremental_updates_give_the_table_a_full_rebuild_would():
    """Updates rebuild only the changed services' models: after any sequence of changes the table must be
    what building it from scratch out of the final services gives (random sequences, fixed seed)."""
    import random

    from svc_mgr.routes import RouteRules

    rng = random.Random(7)
    rules = {"m0": ["s0", "s1"], "m1*": ["s2"]}
    table = RoutingTable(rules=RouteRules(rules))
    services: dict[str, list[Instance]] = {}
    for step in range(600):
        service = f"s{rng.randrange(6)}"
        if rng.random() < 0.2:
            table.update({}, [service])
            services.pop(service, None)
        else:
            instances = [inst(rng.randrange(8), rng.sample(["m0", "m1", "m10", "m2", "m3"], rng.randrange(1, 3)),
                              service) for _ in range(rng.randrange(4))]
            table.update({service: instances})
            fresh = {i.id: i for i in instances}
            if fresh:
                services[service] = list(fresh.values())
            else:
                services.pop(service, None)
        scratch = RoutingTable(rules=RouteRules(rules))
        scratch.update(services)
        assert table.models() == scratch.models(), step
        for model in scratch.models():
            assert sorted(i.id for i in table.instances(model)) == sorted(i.id for i in scratch.instances(model))
