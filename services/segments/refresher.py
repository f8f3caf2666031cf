"""The scheduler of the segments service: keeps every segment fresh.

Each round it refreshes the segments that are due (new, changed, not
refreshed for LIFECYCLE_SEGMENTS_REFRESH_SECONDS, or at the moment a user may
enter by time alone, which their last refresh found, but no sooner than
LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS after it) and re-evaluates the
memberships whose validity ran out (a within_last window closing, a time in
stage passing, the TTL). Replicas share the work: a segment being refreshed
elsewhere is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import grpc

from runtime.errors import ServiceError
from services.segments import store
from services.segments.domain import Clock
from services.segments.handlers import REEVALUATE_BATCH, Memberships

log = logging.getLogger(__name__)

# Segments refreshed per round; the rest wait for the next one.
DUE_PER_ROUND = 10
_RETRYABLE = (
    ServiceError,
    grpc.aio.AioRpcError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class Refresher:
    name = "segments-refresher"

    def __init__(
        self, memberships: Memberships, pool: asyncpg.Pool, clock: Clock, interval: float
    ) -> None:
        self._memberships = memberships
        self._pool = pool
        self._clock = clock
        self._interval = interval

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.run_once()
            except _RETRYABLE as error:
                log.warning("segment refresh round failed, retrying next round: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    async def run_once(self) -> None:
        for segment_id in await store.due_segments(self._pool, self._clock(), DUE_PER_ROUND):
            try:
                await self._memberships.refresh(segment_id, wait=False)
            except _RETRYABLE as error:
                log.warning("refresh of segment %s failed: %s", segment_id, error)
        while await self._memberships.renew_expired() == REEVALUATE_BATCH:
            pass
