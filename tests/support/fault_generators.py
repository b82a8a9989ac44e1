"""Generators for fault-injection tests: they record every delta they produce in a file."""
from __future__ import annotations

import argparse
import asyncio
import time

from generators import ACCEPTED, Generator


class _Ticks(Generator):
    models = ("ticks",)

    def __init__(self, models=None, delay: float = 0.1, first_delay: float = 0.0, words: int = 50,
                 tick_file: str | None = None, accept: bool = False) -> None:
        super().__init__(models)
        self.delay, self.first_delay, self.words, self.tick_file = delay, first_delay, words, tick_file
        self.accept = accept

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--delay", type=float, default=0.1)
        parser.add_argument("--first-delay", type=float, default=0.0)
        parser.add_argument("--words", type=int, default=50)
        parser.add_argument("--tick-file", default=None)
        parser.add_argument("--accept", action="store_true",
                            help="yield ACCEPTED first (AsyncTickGen): the head goes out before --first-delay")

    def _tick(self, i: int) -> str:
        if self.tick_file:
            with open(self.tick_file, "a") as f:
                f.write(f"{i}\n")
        return f"w{i} "


class AsyncTickGen(_Ticks):
    async def chat_stream(self, request):
        if self.accept:
            yield ACCEPTED
        await asyncio.sleep(self.first_delay)
        for i in range(self.words):
            if i:
                await asyncio.sleep(self.delay)
            yield self._tick(i)


class SyncTickGen(_Ticks):
    def chat_stream(self, request):
        time.sleep(self.first_delay)
        for i in range(self.words):
            if i:
                time.sleep(self.delay)
            yield self._tick(i)


class FailingStreamGen(Generator):
    """Streams two words, then raises."""

    models = ("failing-stream",)

    async def chat_stream(self, request):
        yield "one "
        yield "two "
        raise RuntimeError("generator broke")
