"""The routing table: model name -> healthy instances, and the policies that pick one."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from .entry import Instance
from .routes import RouteRules

Policy = Callable[[Sequence[Instance]], Instance]


def pick_random(candidates: Sequence[Instance]) -> Instance:
    return random.choice(candidates)


def pick_least_in_flight(candidates: Sequence[Instance]) -> Instance:
    """Power of two choices over the wrapper's own in-flight counts."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = random.sample(candidates, 2)
    return a if a.in_flight <= b.in_flight else b


POLICIES: dict[str, Policy] = {"random": pick_random, "least_in_flight": pick_least_in_flight}


class RoutingTable:
    """Filled by discovery, read by the request path. Lookups are dict reads; updates rebuild only the models
    of the changed services, and `rules` (wrapper.routes) decide there, once per update, which services
    may serve each model."""

    def __init__(self, policy: Policy = pick_random, cooldown: float = 5.0, rules: RouteRules | None = None) -> None:
        self.policy = policy
        self.cooldown = cooldown
        self.rules = rules if rules is not None else RouteRules()
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._by_model: dict[str, list[Instance]] = {}
        self._services_of: dict[str, set[str]] = {}  # model -> the services whose instances claim it
        self.known_models: set[str] = set()  # every model ever seen, to tell 503 from 404

    # ---- updates (discovery) -----------------------------------------------------------------

    def set_service(self, service: str, instances: Iterable[Instance]) -> None:
        self.update({service: instances})

    def update(self, changed: Mapping[str, Iterable[Instance]], dropped: Iterable[str] = ()) -> None:
        """Several services at once: discovery applies a whole catalog answer. Only the models those
        services serve (or served) are rebuilt, so a change costs what the changed models hold, not the
        whole table (docs/performance.md, "Discovery at scale")."""
        touched: set[str] = set()
        for service, instances in changed.items():
            touched |= self._set(service, instances)
        for service in dropped:
            touched |= self._set(service, ())
        self._rebuild(touched)

    def _set(self, service: str, instances: Iterable[Instance]) -> set[str]:
        """Replace a service's instances; return the models it served before or serves now."""
        old = self._by_service.get(service, {})
        fresh: dict[str, Instance] = {}
        for inst in instances:
            kept = old.get(inst.id)
            if kept is not None and kept.base_url == inst.base_url and kept.models == inst.models:
                inst = kept  # keep in-flight counts and cool-downs across updates
            fresh[inst.id] = inst
        before = {model for inst in old.values() for model in inst.models}
        after = {model for inst in fresh.values() for model in inst.models}
        for model in before - after:
            services = self._services_of[model]
            services.discard(service)
            if not services:
                del self._services_of[model]
        for model in after - before:
            self._services_of.setdefault(model, set()).add(service)
        if fresh:
            self._by_service[service] = fresh
        else:
            self._by_service.pop(service, None)
        return before | after

    def drop_service(self, service: str) -> None:
        if service in self._by_service:
            self.update({}, [service])

    def _rebuild(self, models: Iterable[str]) -> None:
        by_model = {model: [inst for service in self._services_of.get(model, ())
                            for inst in self._by_service[service].values() if model in inst.models]
                    for model in models}
        kept = self.rules.apply(by_model)
        for model in by_model:
            if kept.get(model):
                self._by_model[model] = kept[model]
            else:
                self._by_model.pop(model, None)
        self.known_models.update(model for model, instances in kept.items() if instances)

    # ---- reads (request path) ----------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def instances(self, model: str) -> list[Instance]:
        return self._by_model.get(model, [])

    def pick(self, model: str, exclude: Sequence[Instance] = ()) -> Instance | None:
        """A healthy instance for `model`, preferring ones not cooling down; None if there is none.

        O(1) in the usual case: the policy picks from all instances, and only when its choice is cooling
        down or excluded is the list filtered (a uniform pick stays uniform over what remains)."""
        candidates = self._by_model.get(model)
        if not candidates:
            return None
        now = time.monotonic()
        choice = self.policy(candidates)
        if choice.cooled_until <= now and choice not in exclude:
            return choice
        if exclude:
            candidates = [c for c in candidates if c not in exclude]
            if not candidates:
                return None
        warm = [c for c in candidates if c.cooled_until <= now]
        return self.policy(warm or candidates)

    def in_flight(self) -> int:
        return sum(i.in_flight for instances in self._by_service.values() for i in instances.values())

    def cool_down(self, inst: Instance) -> None:
        inst.cooled_until = time.monotonic() + self.cooldown
