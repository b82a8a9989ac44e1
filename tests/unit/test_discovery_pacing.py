"""How often discovery's watches ask Consul again (#13): a small answer is followed by the next blocking query
at once, a big one by wrapper.consul_min_interval. Consul is scripted in process: every read returns a
changed answer at once, the worst case (a storm of changes)."""
from __future__ import annotations

import asyncio

import pytest

from common.settings import ConsulSettings, WrapperSettings
from svc_mgr import RoutingTable
from svc_mgr.consul_client import Answer
from svc_mgr.discovery import PACED_ANSWER_BYTES, Discovery, pause_after


class StormyConsul:
    """Every read answers at once with a new index and a body of `size` bytes: Consul's index moving on
    every read, as in a storm of registrations."""

    def __init__(self, size: int, moving: bool = True) -> None:
        self.size = size
        self.moving = moving  # False: the same index every time (Consul answered without blocking)
        self.reads = 0

    async def read(self, path: str, index: int | None = None, wait: str | None = None,
                   params: dict[str, str] | None = None) -> Answer:
        self.reads += 1
        return Answer(index=self.reads if self.moving else 7, raw=b"[" + b" " * (self.size - 2) + b"]", filtered_by_acls=False)


async def reads_within(size: int, seconds: float, enough: int, moving: bool = True) -> int:
    """How many reads one watch made (stopping at `enough`) with min_interval far longer than `seconds`."""
    discovery = Discovery(ConsulSettings(), RoutingTable(), WrapperSettings(consul_min_interval=60))
    consul = discovery._consul = StormyConsul(size, moving)  # type: ignore[assignment]

    async def apply(answer: Answer, reconnected: bool) -> None:
        pass

    watch = asyncio.create_task(discovery._watch("/v1/health/state/any", {"filter": "x"}, apply, asyncio.Event()))
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while consul.reads < enough and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    return consul.reads


def test_small_answers_are_followed_by_the_next_query_at_once():
    # the failing-checks answer, the services list, a small catalog: a change right after another one must
    # not wait wrapper.consul_min_interval (it made registration -> routable ≈ 100 ms at 1 instance)
    assert asyncio.run(reads_within(size=2_000, seconds=20, enough=10)) >= 10


def test_a_big_answer_is_read_at_most_once_per_min_interval():
    # the whole checks answer of a large catalog: a storm of changes is decoded once per min_interval (60 s
    # here), so the watch makes its first read and waits
    assert asyncio.run(reads_within(size=PACED_ANSWER_BYTES, seconds=0.5, enough=10)) == 1


def test_a_small_answer_whose_index_did_not_move_is_paced_like_a_big_one():
    # Consul answered without blocking (an index reset, an ACL-filtered answer): asking again at once
    # would loop as fast as Consul answers
    assert asyncio.run(reads_within(size=2_000, seconds=0.5, enough=10, moving=False)) == 2


@pytest.mark.parametrize(("size", "pause"), [(0, 0.0), (PACED_ANSWER_BYTES // 4, 0.025), (PACED_ANSWER_BYTES, 0.1),
                                             (30 * PACED_ANSWER_BYTES, 0.1)])
def test_the_pause_is_the_answers_share_of_min_interval(size, pause):
    assert pause_after(size, 0.1) == pytest.approx(pause)
