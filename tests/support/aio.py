"""Small asyncio helpers for in-process tests."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def collect(it: AsyncIterator[T]) -> list[T]:
    return [x async for x in it]
