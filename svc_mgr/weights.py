"""Weights (worker --weight) for the uniform balancers: a model's instances, each repeated `weight` times.

A uniform pick from that list gives each instance its weighted share in O(1). The list is built lazily,
once per routing-table update, and only for models whose instances do not all weigh the same."""
from __future__ import annotations

from collections.abc import Sequence

from .entry import Instance


def expand(candidates: Sequence[Instance]) -> Sequence[Instance]:
    """`candidates` itself when every weight is equal (the usual case), else each repeated by its weight."""
    first = candidates[0].weight
    if all(c.weight == first for c in candidates):
        return candidates
    return [c for c in candidates for _ in range(c.weight)]


class WeightedPools:
    """model -> its weighted pool, rebuilt when the table hands a new candidate list for the model (the
    table builds a new list for a model whenever that model's instances change)."""

    def __init__(self) -> None:
        self._pools: dict[str, tuple[Sequence[Instance], Sequence[Instance]]] = {}

    def get(self, model: str, candidates: Sequence[Instance]) -> Sequence[Instance]:
        cached = self._pools.get(model)
        if cached is not None and cached[0] is candidates:
            return cached[1]
        pool = expand(candidates)
        self._pools[model] = (candidates, pool)
        return pool
