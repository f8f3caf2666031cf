"""The base of the services' background loops (the outbox relay, the trigger
starter, the segment refresher, the metrics rollup, the workflow timers and
built-in jobs): rounds of work, and between them a wait that a wake-up, the
stop or the end of the pause ends.

A round the worker can outlive failing (the database or a peer unreachable) is
logged and tried again after a pause that doubles with each failure in a row,
so that an outage costs a few log lines rather than one per poll. Anything else
stops the worker, and the host logs it (`runtime.server`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

# The database is unreachable or refused the round's statements.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# The longest pause after failed rounds, so that a worker is back soon after an outage.
MAX_ERROR_PAUSE_SECONDS = 5.0


@dataclass(frozen=True)
class Rest:
    """A pause that wake-ups do not end: a peer the work needs is down, and
    trying on every wake-up would only fail again."""

    seconds: float


# What a round asks for: the seconds until the next round (0: at once), or a rest.
Pause = float | Rest


def jittered(seconds: float) -> float:
    """`seconds` give or take a fifth, so that replicas do not retry in step."""
    return seconds * random.uniform(0.8, 1.2)


def doubling(failures: int, first: float, most: float) -> float:
    """The pause after `failures` in a row: `first`, doubling, at most `most`, jittered."""
    return jittered(min(most, first * 2 ** max(0, failures - 1)))


class PollingWorker(ABC):
    """A worker that works in rounds, woken early by `wake()` when work arrives."""

    name: str
    # Errors a round may fail with that the next round may not: logged, then retried.
    outlived: tuple[type[BaseException], ...] = DATABASE_ERRORS

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._failures = 0

    @abstractmethod
    async def round(self) -> Pause:
        """Does the work that is due; says how long to wait before the next round."""

    def wake(self) -> None:
        """Asks for a round now (new work was committed, or time moved)."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            # Cleared before the round: a wake-up during it makes the next one at once.
            self._wake.clear()
            pause = await self._guarded_round()
            if isinstance(pause, Rest):
                await _first_of(stopping, seconds=pause.seconds)
            elif pause > 0:
                await _first_of(self._wake, stopping, seconds=pause)

    async def _guarded_round(self) -> Pause:
        try:
            pause = await self.round()
        except self.outlived as error:
            self._failures += 1
            pause = doubling(
                self._failures, self.poll_interval, max(self.poll_interval, MAX_ERROR_PAUSE_SECONDS)
            )
            log.warning("%s: a round failed, next in %.1f s: %s", self.name, pause, error)
            return pause
        self._failures = 0
        return pause


async def _first_of(*events: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
