"""Long synchronous loops that let the event loop in: a batch of evaluations
(1,000 events against every trigger of their types, 1,000 users against their
segments) takes up to a second of CPU, and health checks and other calls
would wait for all of it."""

from __future__ import annotations

import asyncio

# Evaluations between two turns of the event loop: a few milliseconds of the
# heaviest conditions (bench/RESULTS.md, expressions).
EVALUATIONS_PER_TURN = 100


class Pacer:
    """Counts units of work and hands the event loop to other tasks every `every` of them."""

    def __init__(self, every: int = EVALUATIONS_PER_TURN) -> None:
        self._every = every
        self._done = 0

    async def done(self, units: int = 1) -> None:
        self._done += units
        if self._done >= self._every:
            self._done = 0
            await asyncio.sleep(0)
