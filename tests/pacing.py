"""Counting how often other tasks run while a batch is evaluated."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def turns_during(work: Awaitable[T]) -> tuple[T, int]:
    """The work's result, and how many turns another task had while it ran: none
    for a loop that never lets the event loop in."""
    turns, running = 0, True

    async def other_task() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before = turns
    result = await work
    during = turns - before
    running = False
    await task
    return result, during
