"""bench/idle_gap.py's pairing: each wrapper stream against the direct stream of the same pair, the order
alternating, medians over the pairs."""
from __future__ import annotations

from bench.idle_gap import measure


class _Client:
    def __init__(self, times: list[float], log: list[str], name: str) -> None:
        self.times, self.log, self.name = iter(times), log, name

    def first_chunk(self) -> float:
        self.log.append(self.name)
        return next(self.times)


def test_pairs_alternate_and_the_difference_is_taken_pair_by_pair() -> None:
    log: list[str] = []
    direct = _Client([1.0, 2.0, 3.0], log, "d")
    wrapped = _Client([1.5, 2.1, 3.9], log, "w")
    d, w, diff = measure(direct, wrapped, 3, 0.0)  # type: ignore[arg-type]
    assert log == ["d", "w", "w", "d", "d", "w"]
    assert (d, w) == (2.0, 2.1)
    assert round(diff, 6) == 0.5  # the pairs' differences 0.5, 0.1, 0.9; not w − d of the medians (0.1)
