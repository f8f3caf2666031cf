"""Background workers of the workflows service, on runtime.worker.PollingWorker.

TimerWorker fires due timers (timers.py); it sleeps until the next one is
due, at most a poll interval, and wakes when a commit arms an earlier one or
the clock jumps. BuiltinJobWorker does the built-in service tasks that call
the users service (jobs.BuiltinJobs); a commit that creates such jobs wakes it.
CampaignWorker begins the due cycles of recurring campaigns and starts their
segments' members, a page per round (campaigns.py).

Neither stops on one bad execution (a bug, a stored graph it cannot run): the
use cases do a batch that fails again one execution at a time, and set aside
the execution that fails alone (its timers postponed, its job given an
incident) while the worker goes on with the others. A round the database
fails is logged and tried again after a backoff (PollingWorker).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from runtime.worker import Pause, PollingWorker
from services.workflows.campaigns import Campaigns
from services.workflows.jobs import BuiltinJobs
from services.workflows.timers import DueTimers

# A round whose every due timer's execution is locked by another step waits this long.
BUSY_PAUSE_SECONDS = 0.05


class TimerWorker(PollingWorker):
    name = "workflow-timers"

    def __init__(self, timers: DueTimers, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self._timers = timers
        self._next_wake: datetime | None = None
        timers.on_new(self.timer_added)
        timers.on_clock_change(self.wake)

    def timer_added(self, due: datetime) -> None:
        """A commit armed a timer due at `due`: a round now if it is due before the next wake."""
        if self._next_wake is None or due < self._next_wake:
            self.wake()

    async def round(self) -> Pause:
        """Fires what is due; the seconds to wait before the next round (0: at
        once). The database may fail anywhere in it, the wait included."""
        claimed, fired = await self._timers.fire_due()
        if claimed >= self._timers.batch and fired:
            return 0
        if claimed and not fired:
            # Every due timer's execution is locked by another step for now.
            return BUSY_PAUSE_SECONDS
        due = await self._timers.next_due()
        now = self._timers.now()
        self._next_wake = due if due is not None else now + timedelta(seconds=self.poll_interval)
        return min(self.poll_interval, (self._next_wake - now).total_seconds())


class CampaignWorker(PollingWorker):
    """Begins due campaign cycles and starts their members, a page per round
    (campaigns.py); sleeps until the next is due, at most a poll interval."""

    name = "workflow-campaigns"

    def __init__(self, campaigns: Campaigns, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self._campaigns = campaigns
        campaigns.on_clock_change(self.wake)

    async def round(self) -> Pause:
        if await self._campaigns.run_due():
            return 0
        due = await self._campaigns.next_due()
        if due is None:
            return self.poll_interval
        # Due already: another replica holds that cycle for now.
        wait = (due - self._campaigns.now()).total_seconds()
        return min(self.poll_interval, wait) if wait > 0 else BUSY_PAUSE_SECONDS


class BuiltinJobWorker(PollingWorker):
    """Sets stages and updates attributes through the users service."""

    name = "workflow-builtin-jobs"

    def __init__(self, jobs: BuiltinJobs, batch: int, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self._jobs = jobs
        self._batch = batch
        jobs.on_new(self.wake)

    async def round(self) -> Pause:
        done = await self._jobs.work_once(self._batch)
        return 0 if done >= self._batch else self.poll_interval
