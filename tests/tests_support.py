from __future__ import annotations

from typing import AsyncIterator, TypeVar

T = TypeVar("T")


async def collect(it: AsyncIterator[T]) -> list[T]:
    return [x async for x in it]
