"""Which Consul services may serve which models: the wrapper's `wrapper.routes` rule.

Consul's ACLs say which service *names* a token may register, not which models a service may claim, so
without a rule any writer of the catalog could claim a model and receive a share of its traffic. The rule
is applied when the routing table changes, never per request.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")
NAMED_IN_WARNING = 10  # services a warning names; a catalog may have thousands


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


class RouteRules:
    """Model name or glob -> the services allowed to serve it. A model's own name wins over globs; among
    globs the first that matches (in the order of the settings file) decides. A model no rule matches may
    be served by any service, with one warning if two different services claim it."""

    def __init__(self, routes: Mapping[str, Sequence[str]] | None = None) -> None:
        routes = routes or {}
        self._exact = {m: frozenset(s) for m, s in routes.items() if not is_glob(m)}
        self._globs = [(m, frozenset(s)) for m, s in routes.items() if is_glob(m)]
        self._rule_of: dict[str, frozenset[str] | None] = {}  # rules are fixed: match each model once
        self._refused: set[tuple[str, str]] = set()  # (model, service) pairs already warned about
        self._shared: set[str] = set()  # models already warned about as claimed by several services

    def allowed(self, model: str) -> frozenset[str] | None:
        """The services that may serve `model`, or None when no rule matches it."""
        try:
            return self._rule_of[model]
        except KeyError:
            pass
        rule = self._exact.get(model)
        if rule is None:
            rule = next((services for pattern, services in self._globs if fnmatch.fnmatchcase(model, pattern)),
                        None)
        self._rule_of[model] = rule
        return rule

    def permits(self, model: str, service: str, claimants: Mapping[str, int]) -> bool:
        """May `service` serve `model`? `claimants`: every service claiming the model now (for the warning
        about a model several services claim without a rule)."""
        allowed = self.allowed(model)
        if allowed is None:
            if len(claimants) > 1:
                self._warn_shared(model, claimants)
            return True
        if service in allowed:
            return True
        self._warn_refused(model, service, allowed)
        return False

    def _warn_refused(self, model: str, service: str, allowed: frozenset[str]) -> None:
        if (model, service) not in self._refused:
            self._refused.add((model, service))
            log.warning("service %r claims model %r, which wrapper.routes lets only %s serve; not routing %r "
                        "to it", service, model, ", ".join(sorted(allowed)) or "no service", model)

    def _warn_shared(self, model: str, services: Iterable[str]) -> None:
        if model not in self._shared:
            self._shared.add(model)
            named = sorted(services)
            more = f" and {len(named) - NAMED_IN_WARNING} more" if len(named) > NAMED_IN_WARNING else ""
            log.warning("model %r is claimed by different services (%s%s) and no wrapper.routes rule says which "
                        "may serve it; routing to all of them", model, ", ".join(named[:NAMED_IN_WARNING]), more)
