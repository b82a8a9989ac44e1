"""The routing table: model name -> healthy instances, and the policies that pick one."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from common.wire import Capability

from .affinity import Affinity
from .entry import Instance
from .routes import RouteRules
from .weights import WeightedPools

Policy = Callable[[Sequence[Instance]], Instance]


def pick_random(candidates: Sequence[Instance]) -> Instance:
    return random.choice(candidates)


def pick_least_in_flight(candidates: Sequence[Instance]) -> Instance:
    """Power of two choices over the wrapper's own in-flight counts, per unit of weight (`candidates` holds
    each instance `weight` times)."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = random.sample(candidates, 2)
    if a.weight == b.weight:  # the usual case: the less busy one
        return a if a.in_flight <= b.in_flight else b
    # Weights differ: in-flight counts are whole requests, so at low concurrency a strict comparison would
    # skew the shares (a 3:1 pair got 0.67-0.80 of the requests instead of 0.75, by concurrency). A coin
    # that leans towards the less busy one linearly in the difference, decisive at one request per unit of
    # weight, adds a correction whose mean is zero when each instance holds its weighted share of the
    # requests in flight: the shares then follow the weights (docs/routing.md, "Weights").
    lean = (b.in_flight / b.weight - a.in_flight / a.weight) / 2
    return a if random.random() < 0.5 + lean else b


# `affinity` picks by key (svc_mgr/affinity.py); a request without a key goes to least-in-flight
POLICIES: dict[str, Policy] = {"random": pick_random, "least_in_flight": pick_least_in_flight,
                               "affinity": pick_least_in_flight}


class RoutingTable:
    """Filled by discovery, read by the request path. Lookups are dict reads; an update edits the lists of
    the changed instances' models in place, and `rules` (wrapper.routes) decide there, never per request,
    which services may serve each model."""

    def __init__(self, policy: Policy = pick_random, cooldown: float = 5.0, rules: RouteRules | None = None,
                 affinity: Affinity | None = None) -> None:
        self.policy = policy
        self.affinity = affinity  # the `affinity` balancer, for picks that carry a key
        self._weighted = WeightedPools()
        self.cooldown = cooldown
        self.rules = rules if rules is not None else RouteRules()
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._by_model: dict[str, list[Instance]] = {}
        self._services_of: dict[str, dict[str, int]] = {}  # model -> service -> its instances claiming it
        # model -> instance -> its index in _by_model[model] (by the object: its update brought it, and takes it
        # away; a key of names was a tuple per instance and model, 0.6 MiB at 10,000 instances)
        self._slot: dict[str, dict[Instance, int]] = {}
        self.known_models: set[str] = set()  # every model ever seen, to tell 503 from 404
        self._capabilities: dict[str, frozenset[Capability]] = {}  # per model: what any of its instances serves
        self._serving: dict[str, dict[Capability, int]] = {}  # per model: its routed instances serving each
        # only for a model whose instances serve different endpoints: those serving each one
        self._split: dict[tuple[str, Capability | None], list[Instance]] = {}

    # ---- updates (discovery) -----------------------------------------------------------------

    def set_service(self, service: str, instances: Iterable[Instance]) -> None:
        self.update({service: instances})

    def update(self, changed: Mapping[str, Iterable[Instance]], dropped: Iterable[str] = ()) -> None:
        """Several services at once: discovery applies a whole catalog answer. A service's change costs
        what that service holds, not what its models hold: each model's list is edited in place
        (docs/performance.md, "The routing table beyond this machine")."""
        touched: set[str] = set()
        for service, instances in changed.items():
            self._set(service, instances, touched)
        for service in dropped:
            self._set(service, (), touched)
        for model in touched:
            self._index_capabilities(model)
            if model in self._by_model:
                # a new list object per changed model: the weighted pools and affinity rings cache per list
                self._by_model[model] = list(self._by_model[model])

    def _set(self, service: str, instances: Iterable[Instance], touched: set[str]) -> None:
        old = self._by_service.get(service, {})
        fresh: dict[str, Instance] = {}
        for inst in instances:
            kept = old.get(inst.id)
            if (kept is not None and kept.base_url == inst.base_url and kept.models == inst.models
                    and kept.capabilities == inst.capabilities and kept.weight == inst.weight):
                inst = kept  # keep in-flight counts and cool-downs across updates
            fresh[inst.id] = inst
        for inst in old.values():
            if fresh.get(inst.id) is not inst:
                touched.update(inst.models)
                for model in inst.models:
                    self._remove(model, inst)
        for inst in fresh.values():
            if old.get(inst.id) is not inst:
                touched.update(inst.models)
                for model in inst.models:
                    self._add(model, inst)
        if fresh:
            self._by_service[service] = fresh
        else:
            self._by_service.pop(service, None)

    def _add(self, model: str, inst: Instance) -> None:
        services = self._services_of.setdefault(model, {})
        services[inst.service] = services.get(inst.service, 0) + 1
        if not self.rules.permits(model, inst.service, services):
            return
        routed = self._by_model.setdefault(model, [])
        self._slot.setdefault(model, {})[inst] = len(routed)
        routed.append(inst)
        self.known_models.add(model)
        serving = self._serving.setdefault(model, {})
        for capability in inst.capabilities:
            serving[capability] = serving.get(capability, 0) + 1

    def _remove(self, model: str, inst: Instance) -> None:
        services = self._services_of[model]
        services[inst.service] -= 1
        if not services[inst.service]:
            del services[inst.service]
            if not services:
                del self._services_of[model]
        slots = self._slot.get(model)
        slot = None if slots is None else slots.pop(inst, None)
        if slots is None or slot is None:
            return  # a rule kept it off the model
        serving = self._serving[model]
        for capability in inst.capabilities:
            serving[capability] -= 1
        routed = self._by_model[model]
        last = routed.pop()  # swap-remove: O(1), and order means nothing to a random pick
        if last is not inst:
            routed[slot] = last
            slots[last] = slot
        if not routed:
            del self._by_model[model]
            del self._serving[model]
            del self._slot[model]

    def _index_capabilities(self, model: str) -> None:
        """What `model` serves, from counts kept by _add and _remove; lists per capability only when its
        instances differ (rare: then the cost is the model's instances, once per change)."""
        for capability in self._capabilities.pop(model, ()):
            self._split.pop((model, capability), None)
        routed = self._by_model.get(model)
        if not routed:
            return
        serving = self._serving[model]
        served = frozenset(c for c, n in serving.items() if n)
        self._capabilities[model] = served
        if any(serving[c] < len(routed) for c in served):
            for capability in served:
                self._split[model, capability] = [i for i in routed if capability in i.capabilities]

    def drop_service(self, service: str) -> None:
        self.update({}, [service])

    # ---- reads (request path) ----------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def instances(self, model: str) -> list[Instance]:
        return self._by_model.get(model, [])

    def routed(self, service: str) -> Mapping[str, Instance]:
        """`service`'s instances by id, as the table holds them: an update that brings one equal to a routed
        instance keeps the routed object (its in-flight count, its cool-down)."""
        return self._by_service.get(service, {})

    def serves(self, model: str, capability: Capability) -> bool:
        """False only for a model with instances none of which serves `capability`."""
        served = self._capabilities.get(model)
        return served is None or capability in served

    def pick(self, model: str, exclude: Sequence[Instance] = (), capability: Capability | None = None,
             key: bytes | None = None) -> Instance | None:
        """A healthy instance for `model` (that serves `capability`), preferring ones not cooling down;
        None if there is none.

        O(1) in the usual case: the policy picks from all instances (each repeated by its weight), and only
        when its choice is cooling down or excluded is the list filtered (a uniform pick stays uniform over
        what remains). With the affinity balancer, a request's `key` decides (svc_mgr/affinity.py)."""
        candidates = (self._split and self._split.get((model, capability))) or self._by_model.get(model)
        if not candidates:
            return None
        now = time.monotonic()
        if key is not None and self.affinity is not None:
            return self._pick_by_key(model, candidates, key, exclude, now)
        pool = self._weighted.get(model, candidates)
        choice = self.policy(pool)
        if choice.cooled_until <= now and choice not in exclude:
            return choice
        if exclude:
            pool = [c for c in pool if c not in exclude]
            if not pool:
                return None
        warm = [c for c in pool if c.cooled_until <= now]
        return self.policy(warm or pool)

    def _pick_by_key(self, model: str, candidates: list[Instance], key: bytes, exclude: Sequence[Instance],
                     now: float) -> Instance | None:
        assert self.affinity is not None
        usable = [c for c in candidates if c not in exclude] if exclude else None
        if usable == []:
            return None
        return self.affinity.pick(model, candidates, key, usable, now)

    def in_flight(self) -> int:
        return sum(i.in_flight for instances in self._by_service.values() for i in instances.values())

    def cool_down(self, inst: Instance) -> None:
        inst.cooled_until = time.monotonic() + self.cooldown
