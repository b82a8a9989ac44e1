"""The routing table: model name -> healthy instances, and the policies that pick one."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from .affinity import Affinity
from .entry import Instance
from .routes import RouteRules
from .weights import WeightedPools

Policy = Callable[[Sequence[Instance]], Instance]


def pick_random(candidates: Sequence[Instance]) -> Instance:
    return random.choice(candidates)


def pick_least_in_flight(candidates: Sequence[Instance]) -> Instance:
    """Power of two choices over the wrapper's own in-flight counts, per unit of weight."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = random.sample(candidates, 2)
    return a if a.in_flight * b.weight <= b.in_flight * a.weight else b


# `affinity` picks by key (svc_mgr/affinity.py); a request without a key goes to least-in-flight
POLICIES: dict[str, Policy] = {"random": pick_random, "least_in_flight": pick_least_in_flight,
                               "affinity": pick_least_in_flight}


class RoutingTable:
    """Filled by discovery, read by the request path. Lookups are dict reads; updates rebuild per service,
    and `rules` (wrapper.routes) decide there, once per update, which services may serve each model."""

    def __init__(self, policy: Policy = pick_random, cooldown: float = 5.0, rules: RouteRules | None = None,
                 affinity: Affinity | None = None) -> None:
        self.policy = policy
        self.affinity = affinity  # the `affinity` balancer, for picks that carry a key
        self._weighted = WeightedPools()
        self.cooldown = cooldown
        self.rules = rules if rules is not None else RouteRules()
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._by_model: dict[str, list[Instance]] = {}
        self.known_models: set[str] = set()  # every model ever seen, to tell 503 from 404

    # ---- updates (discovery) -----------------------------------------------------------------

    def set_service(self, service: str, instances: Iterable[Instance]) -> None:
        self._set(service, instances)
        self._rebuild()

    def update(self, changed: Mapping[str, Iterable[Instance]], dropped: Iterable[str] = ()) -> None:
        """Several services at once, with one rebuild: discovery applies a whole catalog answer."""
        for service, instances in changed.items():
            self._set(service, instances)
        for service in dropped:
            self._by_service.pop(service, None)
        self._rebuild()

    def _set(self, service: str, instances: Iterable[Instance]) -> None:
        old = self._by_service.get(service, {})
        fresh: dict[str, Instance] = {}
        for inst in instances:
            kept = old.get(inst.id)
            if (kept is not None and kept.base_url == inst.base_url and kept.models == inst.models
                    and kept.weight == inst.weight):
                inst = kept  # keep in-flight counts and cool-downs across updates
            fresh[inst.id] = inst
        if fresh:
            self._by_service[service] = fresh
        else:
            self._by_service.pop(service, None)

    def drop_service(self, service: str) -> None:
        if self._by_service.pop(service, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        by_model: dict[str, list[Instance]] = {}
        for instances in self._by_service.values():
            for inst in instances.values():
                for model in inst.models:
                    by_model.setdefault(model, []).append(inst)
        self._by_model = self.rules.apply(by_model)
        self.known_models.update(self._by_model)

    # ---- reads (request path) ----------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def instances(self, model: str) -> list[Instance]:
        return self._by_model.get(model, [])

    def pick(self, model: str, exclude: Sequence[Instance] = (), key: bytes | None = None) -> Instance | None:
        """A healthy instance for `model`, preferring ones not cooling down; None if there is none.

        O(1) in the usual case: the policy picks from all instances (each repeated by its weight), and only
        when its choice is cooling down or excluded is the list filtered (a uniform pick stays uniform over
        what remains). With the affinity balancer, a request's `key` decides (svc_mgr/affinity.py)."""
        candidates = self._by_model.get(model)
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
