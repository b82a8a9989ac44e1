"""The affinity balancer, weights, aliases/fallbacks planning and the prefix-cache simulation, in process."""
from __future__ import annotations

import collections
import random

import orjson
import pytest

from common import wire
from common.settings import WrapperSettings
from generators.prefix_cache import BLOCK_CHARS, PrefixCache
from svc_mgr import Instance, RoutingTable
from svc_mgr.affinity import Affinity
from svc_mgr.entry import BadEntry, parse_instance
from svc_mgr.routing import pick_least_in_flight, pick_random
from wrapper.affinity_key import affinity_key
from wrapper.model_plan import ModelPlan, Target


def inst(i: int, weight: int = 1) -> Instance:
    return Instance(id=f"svc-{i}", service="svc", address="127.0.0.1", port=9000 + i, models=("m",), weight=weight)


def table_of(*instances: Instance, epsilon: float = 0.25) -> RoutingTable:
    table = RoutingTable(pick_least_in_flight, affinity=Affinity(epsilon=epsilon))
    table.set_service("svc", instances)
    return table


def keys(n: int) -> list[bytes]:
    return [affinity_key(f"s{i}", {}, 100) for i in range(n)]  # type: ignore[misc]


def test_a_key_sticks_to_its_instance():
    table = table_of(*(inst(i) for i in range(4)))
    for key in keys(50):
        first = table.pick("m", key=key)
        assert all(table.pick("m", key=key) is first for _ in range(5))


def test_two_replicas_place_new_keys_alike():
    a, b = table_of(*(inst(i) for i in range(4))), table_of(*(inst(i) for i in range(4)))
    assert [a.pick("m", key=k).id for k in keys(100)] == [b.pick("m", key=k).id for k in keys(100)]


def test_new_keys_spread_over_instances():
    table = table_of(*(inst(i) for i in range(4)))
    counts = collections.Counter(table.pick("m", key=k).id for k in keys(2000))
    assert len(counts) == 4 and min(counts.values()) > 300  # 500 each, give or take the ring's unevenness


def test_an_instance_above_the_bound_is_passed_over_and_the_moved_key_stays():
    table = table_of(inst(0), inst(1))
    key = keys(1)[0]
    home = table.pick("m", key=key)
    home.in_flight = 5  # keep bound: ceil(1.25 * (5 + 1) / 2) = 4, + keep_slack 1: a sixth request does not fit
    moved = table.pick("m", key=key)
    assert moved is not home
    home.in_flight = 0
    assert table.pick("m", key=key) is moved


def test_with_everything_busy_the_pick_still_answers():
    table = table_of(inst(0), inst(1), epsilon=0)
    for i in table.instances("m"):
        i.in_flight = 5
    assert table.pick("m", key=keys(1)[0]) is not None


def test_an_instance_leaving_moves_only_its_keys():
    instances = [inst(i) for i in range(4)]
    table = table_of(*instances)
    before = {k: table.pick("m", key=k).id for k in keys(400)}
    table.set_service("svc", instances[:3])
    after = {k: table.pick("m", key=k).id for k in keys(400)}
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == "svc-3"}


def test_excluded_and_cooling_instances_are_skipped():
    table = table_of(inst(0), inst(1))
    key = keys(1)[0]
    home = table.pick("m", key=key)
    assert table.pick("m", exclude=[home], key=key) is not home
    table.cool_down(home)
    assert table.pick("m", key=key) is not home
    assert table.pick("m", exclude=list(table.instances("m")), key=key) is None


def test_the_remembered_map_is_bounded():
    table = RoutingTable(affinity=(affinity := Affinity(max_keys=10)))
    table.set_service("svc", [inst(0), inst(1)])
    for k in keys(50):
        table.pick("m", key=k)
    assert len(affinity) == 10


@pytest.mark.parametrize("policy", [pick_random, pick_least_in_flight])
def test_weights_hold_for_both_uniform_balancers(policy):
    random.seed(7)
    table = RoutingTable(policy)
    table.set_service("svc", [inst(0, weight=3), inst(1, weight=1)])
    counts = collections.Counter(table.pick("m").id for _ in range(8000))
    assert 0.72 < counts["svc-0"] / 8000 < 0.78


def test_weights_hold_under_load_for_least_in_flight():
    random.seed(7)
    heavy, light = inst(0, weight=3), inst(1, weight=1)
    table = RoutingTable(pick_least_in_flight)
    table.set_service("svc", [heavy, light])
    open_: collections.deque[Instance] = collections.deque()
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(8000):  # 8 requests in flight at any time, each ending in order
        chosen = table.pick("m")
        chosen.in_flight += 1
        open_.append(chosen)
        counts[chosen.id] += 1
        if len(open_) == 8:
            open_.popleft().in_flight -= 1
    assert 0.70 < counts["svc-0"] / 8000 < 0.80


def test_the_weight_is_read_from_the_registration():
    entry = {"Service": {"ID": "x-1", "Service": "x", "Address": "10.0.0.1", "Port": 1,
                         "Tags": ["openai-api-wrapper", "model=m"], "Meta": {"weight": "3"}}}
    assert parse_instance(entry).weight == 3
    entry["Service"]["Meta"] = {"weight": "0"}
    with pytest.raises(BadEntry, match="weight"):
        parse_instance(entry)
    entry["Service"]["Meta"] = {}
    assert parse_instance(entry).weight == 1


def test_the_key_order():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "first"}]}
    later = {"messages": [*chat["messages"], {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "second"}]}
    assert affinity_key(None, chat, 100) == affinity_key(None, later, 100)  # the opening decides
    assert affinity_key("sess", chat, 100) != affinity_key(None, chat, 100)
    assert affinity_key(None, {**chat, "prompt_cache_key": "p"}, 100) == affinity_key(None, {"prompt_cache_key": "p"}, 100)
    assert affinity_key(None, {**chat, "user": "u"}, 100) == affinity_key(None, {"user": "u"}, 100)
    assert affinity_key(None, {"prompt": "x" * 10 + "a"}, 10) == affinity_key(None, {"prompt": "x" * 10 + "b"}, 10)
    assert affinity_key(None, {"input": "embed me"}, 10) is None


def test_rename_model_touches_the_model_field_only():
    answer = orjson.dumps({"model": "qwen", "choices": [{"message": {"content": '"model":"qwen"'}}]})
    renamed = orjson.loads(wire.rename_model(answer, "gpt-4o-mini"))
    assert renamed["model"] == "gpt-4o-mini" and renamed["choices"][0]["message"]["content"] == '"model":"qwen"'
    events = b'data: {"model" : "qwen","x":1}\n\ndata: {"model":"qwen"}\n\n'
    assert wire.rename_model(events, "pub", count=0).count(b'"model":"pub"') == 2


def test_the_plan_chain_keeps_to_what_a_key_may_use():
    plan = ModelPlan(WrapperSettings(aliases={"pub": ["a", "b"]}, fallbacks={"pub": ["c", "d"], "a": ["e"]}))
    chain = plan.chain("pub", bytes([2]), allows=lambda m: m != "d")  # a key rotates the group by its first byte
    assert chain == [Target("a", "pub"), Target("b", "pub"), Target("c", "c"), Target("e", "e")]
    assert plan.chain("pub", bytes([1]), allows=lambda m: True)[:2] == [Target("b", "pub"), Target("a", "pub")]
    assert {plan.chain("pub", None, allows=lambda m: True)[0].model for _ in range(50)} == {"a", "b"}
    assert "pub" in plan and "a" in plan and "zzz" not in plan
    assert plan.answer_name(Target("a", "pub")) == "pub" and plan.answer_name(Target("c", "c")) is None


def test_the_prefix_cache_counts_blocks_of_served_sequences():
    cache = PrefixCache(2)
    turn1 = "s" * (3 * BLOCK_CHARS)
    assert cache.lookup(turn1) == 0
    cache.store(turn1 + "a" * BLOCK_CHARS)
    assert cache.lookup(turn1 + "a" * BLOCK_CHARS + "u" * 10) == 4 * BLOCK_CHARS
    cache.store("x" * BLOCK_CHARS)
    cache.store("y" * BLOCK_CHARS)  # evicts the first sequence
    assert cache.lookup(turn1) == 0
    assert cache.stats()["prefix_cache"]["hits"] == 1


def test_routing_config_mistakes_name_the_key_and_the_file(tmp_path):
    from common.settings import ConfigError, load_settings

    for text, key in (("wrapper:\n  aliases: {pub: []}\n", "wrapper.aliases.pub"),
                      ("wrapper:\n  balancer: afinity\n", "wrapper.balancer"),
                      ("wrapper:\n  affinity: {epsilon: -1}\n", "wrapper.affinity.epsilon"),
                      ("wrapper:\n  fallbacks: {m: [1]}\n", "wrapper.fallbacks.m.0")):
        path = tmp_path / "env.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"{path}.*{key}"):
            load_settings(path, environ={})


def test_the_in_flight_total_is_summed_once_per_ttl_and_counted_up_between():
    from svc_mgr.affinity import TOTAL_TTL

    affinity = Affinity()
    instances = [inst(0), inst(1)]
    instances[0].in_flight = 3
    assert affinity._in_flight("m", instances, now=100.0) == 3
    instances[0].in_flight = 0
    assert affinity._in_flight("m", instances, now=100.0 + TOTAL_TTL / 2) == 3  # reused
    instances[1].in_flight = 1
    affinity.pick("m", instances, keys(1)[0], None, now=100.0 + TOTAL_TTL / 2)
    assert affinity._totals["m"][1] == 4  # the pick counted its own request in
    assert affinity._in_flight("m", instances, now=100.0 + 2 * TOTAL_TTL) == 1  # summed again
