"""The metrics service's background loop: the scheduled rollup, which
recomputes the trailing window every LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS.
Replicas take turns through the rollup's advisory lock: a replica that finds
it taken skips the round. A round the database fails is logged and tried
again (runtime.worker)."""

from __future__ import annotations

from runtime.worker import Pause, PollingWorker
from services.metrics.handlers import Rollups


class RollupScheduler(PollingWorker):
    name = "metrics-rollup"

    def __init__(self, rollups: Rollups, interval: float) -> None:
        super().__init__(interval)
        self._rollups = rollups

    async def round(self) -> Pause:
        await self._rollups.trailing(wait=False)
        return self.poll_interval
