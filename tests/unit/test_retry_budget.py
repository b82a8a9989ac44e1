"""wrapper.retry_budget.RetryBudget with a hand-driven clock."""
from __future__ import annotations

from wrapper.retry_budget import WINDOW_SECONDS, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(budget: RetryBudget) -> int:
    """Retries granted until the budget says no."""
    granted = 0
    while budget.try_retry():
        granted += 1
    return granted


def test_retries_are_a_share_of_requests():
    budget = RetryBudget(0.2, 0, Clock())
    for _ in range(100):
        budget.request()
    assert spend(budget) == 20


def test_the_reserve_allows_retries_without_requests():
    budget = RetryBudget(0.2, 1.5, Clock())
    assert spend(budget) == 15  # 1.5 a second over the window


def test_requests_and_retries_leave_the_window():
    clock = Clock()
    budget = RetryBudget(0.5, 0, clock)
    for _ in range(10):
        budget.request()
    assert spend(budget) == 5
    clock.now += WINDOW_SECONDS - 1
    assert spend(budget) == 0  # still in the window
    clock.now += 1
    assert spend(budget) == 0  # the requests left with the retries
    budget.request()
    budget.request()
    assert spend(budget) == 1


def test_a_long_pause_empties_the_window():
    clock = Clock()
    budget = RetryBudget(1.0, 0, clock)
    for _ in range(50):
        budget.request()
    clock.now += 1_000_000  # emptied in WINDOW_SECONDS steps, not one per second elapsed
    assert spend(budget) == 0
