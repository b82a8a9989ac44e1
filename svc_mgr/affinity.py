"""The `affinity` balancer: consistent hashing with bounded loads, plus a bounded memory of where each
key went (docs/routing.md).

A key seen for the first time is placed by a hash ring with virtual nodes (`vnodes` per unit of weight),
so every wrapper replica with the same instances places it the same way, and an instance joining or
leaving moves only its own share of keys. After that the key's last instance is remembered (an LRU of
`max_keys` entries), because that is where the engine's prefix cache now is.

Bounded load, with two bounds, because a move is free for a key without a cache and costly for one with:
- placing a key (a new one, or one that must move) passes over every instance whose in-flight count would
  exceed ceil((1 + place_epsilon) x its weighted share of the model's in-flight requests, this one
  included), for the next one on the ring; the key is remembered where it lands;
- a remembered key stays on its instance up to ceil((1 + epsilon) x that share) + keep_slack requests:
  moving it throws away its cached prefix (a cold prefill of the whole conversation), while one request
  more on a busy instance costs a share of a batch. With few requests per instance, in-flight counts
  swing by whole requests, and a bound without that slack moved a conversation on one turn in seven of
  the bench's (docs/performance.md, "Affinity routing (#14)").

Cost per pick: a remembered key on an instance holding at most keep_slack requests is two dict reads; a
busier one needs the model's in-flight total, summed over its instances at most once per TOTAL_TTL (5 ms)
and shared by the picks in between; a new key adds a bisect of the ring (O(log n)).
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from .entry import Instance

TOTAL_TTL = 0.005  # seconds a model's in-flight total is reused for the load bound


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """One model's instances as points on a ring. Built once per change of the model's instances, and
    then from the previous ring: an instance leaving or joining costs a pass over the points, not a sort."""

    def __init__(self, candidates: Sequence[Instance], points_of: Callable[[Instance], list[int]],
                 previous: Ring | None = None) -> None:
        self.source = candidates  # the table's list this ring was built from (identity marks staleness)
        self.members = [(inst.id, inst.weight) for inst in candidates]
        self.by_id = {inst.id: inst for inst in candidates}
        self.total_weight = sum(inst.weight for inst in candidates)
        kept = set(self.members) & set(previous.members) if previous is not None else set()
        added = sorted((h, inst.id) for inst in candidates if (inst.id, inst.weight) not in kept
                       for h in points_of(inst))
        if previous is not None and kept:
            kept_ids = {member_id for member_id, _ in kept}
            old = [(h, i) for h, i in zip(previous.hashes, previous.ids, strict=True) if i in kept_ids]
            points = list(heapq.merge(old, added)) if added else old
        else:
            points = added
        self.hashes: list[int] = [h for h, _ in points]
        self.ids: list[str] = [i for _, i in points]
        self.owners = [self.by_id[i] for i in self.ids]

    def reuse(self, candidates: Sequence[Instance]) -> bool:
        """Take over a new list of the same instances (another model's or service's change rebuilt the
        table): no hashing or sorting, only the Instance objects are refreshed. False if they differ."""
        if [(inst.id, inst.weight) for inst in candidates] != self.members:
            return False
        if any(a is not b for a, b in zip(candidates, self.source, strict=True)):
            self.by_id = {inst.id: inst for inst in candidates}
            self.owners = [self.by_id[i] for i in self.ids]
        self.source = candidates
        return True

    def walk(self, key: bytes) -> Iterator[Instance]:
        """The distinct instances in ring order from the key's point: its home first, then the next."""
        start = bisect.bisect(self.hashes, _point(key))
        seen: set[str] = set()
        size = len(self.owners)
        for step in range(size):
            inst = self.owners[(start + step) % size]
            if inst.id not in seen:
                seen.add(inst.id)
                yield inst
                if len(seen) == len(self.by_id):
                    return


class Affinity:
    def __init__(self, epsilon: float = 0.25, max_keys: int = 100_000, vnodes: int = 40,
                 place_epsilon: float = 0.0, keep_slack: int = 1) -> None:
        self.epsilon = epsilon
        self.max_keys = max_keys
        self.vnodes = vnodes
        self.place_epsilon = place_epsilon
        self.keep_slack = keep_slack
        # picks by outcome, for /metrics and the bench: the remembered instance took the key, a new key was
        # placed, a remembered key had to move (its instance was over the bound, cooling down or had failed)
        self.kept = self.placed = self.moved = 0
        self._homes: OrderedDict[tuple[str, bytes], str] = OrderedDict()  # (model, key) -> instance id
        self._rings: dict[str, Ring] = {}
        self._totals: dict[str, list] = {}  # model -> [valid until, in-flight total, the list it was summed over]
        self._points: dict[tuple[str, int], list[int]] = {}  # (instance id, weight) -> its ring points

    def _points_of(self, inst: Instance) -> list[int]:
        """An instance's ring points, hashed once per instance (not per ring rebuild); forgotten with
        the instance once no model's ring holds it any more."""
        member = (inst.id, inst.weight)
        points = self._points.get(member)
        if points is None:
            points = self._points[member] = [_point(f"{inst.id}#{v}".encode()) for v in range(self.vnodes * inst.weight)]
        return points

    def __len__(self) -> int:
        return len(self._homes)

    def ring(self, model: str, candidates: Sequence[Instance]) -> Ring:
        ring = self._rings.get(model)
        if ring is not None and (ring.source is candidates or ring.reuse(candidates)):
            return ring
        ring = self._rings[model] = Ring(candidates, self._points_of, ring)
        if len(self._points) > 2 * sum(len(r.members) for r in self._rings.values()):
            live = {m for r in self._rings.values() for m in r.members}
            self._points = {m: p for m, p in self._points.items() if m in live}
        return ring

    def home(self, model: str, key: bytes) -> str | None:
        """The instance id `key` last went to, if it is remembered."""
        return self._homes.get((model, key))

    def pick(self, model: str, candidates: Sequence[Instance], key: bytes, usable: Sequence[Instance] | None,
             now: float) -> Instance | None:
        """The instance for `key`: its remembered one, else the first on the ring from the key's point,
        passing over instances above the load bound, cooling down or not in `usable` (None: all are)."""
        ring = self.ring(model, candidates)
        slot = (model, key)
        homes = self._homes
        remembered = ring.by_id.get(homes.get(slot, ""))
        if (remembered is not None and remembered.in_flight <= self.keep_slack and remembered.cooled_until <= now
                and usable is None):
            homes.move_to_end(slot)  # the usual case, decided without the load bound's sum
            self.kept += 1
            self._count_up(model)
            return remembered
        bound = _Bound(self.epsilon, self.place_epsilon, self.keep_slack,
                       lambda: self._in_flight(model, candidates, now), ring.total_weight)
        if remembered is not None:
            if self._usable(remembered, usable, now) and bound.keeps(remembered):
                homes.move_to_end(slot)
                self.kept += 1
                self._count_up(model)
                return remembered
            self.moved += 1
        else:
            self.placed += 1
        choice = next((i for i in ring.walk(key) if self._usable(i, usable, now) and bound.places(i)), None)
        if choice is None:  # everything is busy or cooling: the least loaded usable one, as other balancers
            pool = [c for c in candidates if usable is None or c in usable]
            if not pool:
                return None
            warm = [c for c in pool if c.cooled_until <= now] or pool
            choice = min(warm, key=lambda c: c.in_flight / c.weight)
        homes[slot] = choice.id
        homes.move_to_end(slot)
        if len(homes) > self.max_keys:
            homes.popitem(last=False)
        self._count_up(model)
        return choice

    def _count_up(self, model: str) -> None:
        """The request about to start on the instance picked, added to the model's reused in-flight total."""
        if (counted := self._totals.get(model)) is not None:
            counted[1] += 1

    def _in_flight(self, model: str, candidates: Sequence[Instance], now: float) -> int:
        """The model's in-flight total, summed at most once per TOTAL_TTL seconds (and counted up by the
        picks in between): at high request rates the O(n) sum is shared by many picks, and at low rates
        it costs nothing that matters. Ends of requests are seen at the next sum, so in between the mean
        can only be overestimated, by the requests that ended: the bound is briefly a little looser."""
        counted = self._totals.get(model)
        if counted is not None and counted[0] > now and counted[2] is candidates:
            return counted[1]
        total = sum(c.in_flight for c in candidates)
        self._totals[model] = [now + TOTAL_TTL, total, candidates]
        return total

    @staticmethod
    def _usable(inst: Instance, usable: Sequence[Instance] | None, now: float) -> bool:
        return inst.cooled_until <= now and (usable is None or inst in usable)


class _Bound:
    """The two load bounds (module docstring), with the model's in-flight total asked for only if an
    instance is busy at all."""

    def __init__(self, epsilon: float, place_epsilon: float, keep_slack: int, total_of: Callable[[], int],
                 total_weight: int) -> None:
        self.epsilon = epsilon
        self.place_epsilon = place_epsilon
        self.keep_slack = keep_slack
        self.total_of = total_of
        self.total_weight = total_weight
        self._total: int | None = None

    def capacity(self, inst: Instance, epsilon: float) -> int:
        """The requests `inst` may hold, the one being placed included: ceil((1 + epsilon) x its weighted
        share of the model's in-flight requests, that one counted too) - "consistent hashing with bounded
        loads" (Mirrokni, Thorup, Zadimoghaddam)."""
        if self._total is None:
            self._total = self.total_of()
        share = (self._total + 1) * inst.weight / self.total_weight
        return math.ceil((1 + epsilon) * share)

    def places(self, inst: Instance) -> bool:
        return inst.in_flight == 0 or inst.in_flight + 1 <= self.capacity(inst, self.place_epsilon)

    def keeps(self, inst: Instance) -> bool:
        return inst.in_flight + 1 <= self.capacity(inst, self.epsilon) + self.keep_slack
