"""The segments service's background loop: the scheduler, which keeps every
segment fresh.

Each round it refreshes the segments that are due (new, changed, not
refreshed for LIFECYCLE_SEGMENTS_REFRESH_SECONDS, or at the moment a user may
enter by time alone, which their last refresh found, but no sooner than
LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS after it) and re-evaluates the
memberships whose validity ran out (a within_last window closing, a time in
stage passing, the TTL). Replicas share the work: a segment being refreshed
elsewhere is skipped.
"""

from __future__ import annotations

import logging

import grpc

from runtime.errors import ServiceError
from runtime.worker import DATABASE_ERRORS, Pause, PollingWorker
from services.segments.handlers import REEVALUATE_BATCH, Memberships

log = logging.getLogger(__name__)

# Segments refreshed per round; the rest wait for the next one.
DUE_PER_ROUND = 10


class Refresher(PollingWorker):
    name = "segments-refresher"
    # The database, or the users service, could not serve a refresh.
    outlived = (*DATABASE_ERRORS, ServiceError, grpc.aio.AioRpcError)

    def __init__(self, memberships: Memberships, interval: float) -> None:
        super().__init__(interval)
        self._memberships = memberships

    async def round(self) -> Pause:
        await self.run_once()
        return self.poll_interval

    async def run_once(self) -> None:
        for segment_id in await self._memberships.due(DUE_PER_ROUND):
            try:
                await self._memberships.refresh(segment_id, wait=False)
            except self.outlived as error:
                # One segment's failure holds back no other.
                log.warning("refresh of segment %s failed: %s", segment_id, error)
        while await self._memberships.renew_expired() == REEVALUATE_BATCH:
            pass
