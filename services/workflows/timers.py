"""Timer events that came due: fired by the timer worker of any replica.

Due timers are claimed with FOR UPDATE SKIP LOCKED and each is deleted in the
transaction of the step it causes, so a timer fires once however many
replicas run, and one that came due while no replica ran fires at the next
start. A round that fails is done again one execution at a time, and the
execution that fails alone is set aside (its timers postponed) while the
others fire.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import NamedTuple

from runtime.database import UnitOfWork
from services.workflows.state import TimerFired, Trigger
from services.workflows.step_rows import Notes
from services.workflows.stepper import CONNECTION_ERRORS, Advance, Stepper, by_engine
from services.workflows.store import timers as store
from services.workflows.store.timers import DueTimer

log = logging.getLogger(__name__)

# The timers of an execution whose user's profile could not be read fire again after this.
PROFILE_RETRY = timedelta(seconds=5)
# The timers of an execution whose step failed alone are tried again after this.
SET_ASIDE = timedelta(minutes=1)


class Fired(NamedTuple):
    """A round of due timers: how many were claimed, how many fired."""

    claimed: int
    fired: int


class DueTimers:
    """Fires the timers that came due, a batch at a time."""

    def __init__(self, stepper: Stepper, batch: int) -> None:
        self._stepper = stepper
        self.batch = batch

    def now(self) -> datetime:
        return self._stepper.clock.now()

    def on_new(self, listener: Callable[[datetime], None]) -> None:
        """`listener` runs after each commit that armed timers, with the earliest due time."""
        self._stepper.timer_listeners.append(listener)

    def on_clock_change(self, listener: Callable[[], None]) -> None:
        """`listener` runs whenever the clock jumps (a test's clock)."""
        self._stepper.clock.on_change(listener)

    async def next_due(self) -> datetime | None:
        """When the earliest timer is due; None without timers."""
        return await store.next_due(self._stepper.context.pool)

    async def fire_due(self) -> Fired:
        """Fires up to a batch of due timers in one transaction; should that
        fail, those of each execution in a transaction of their own."""
        stepper = self._stepper
        claimed: list[DueTimer] = []
        try:
            return await stepper.transaction(partial(self._fire, claimed, None))
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("a round of %d timers failed; each execution fires alone", len(claimed))
        rounds = [
            await stepper.transaction(partial(self._fire, [], execution_id))
            for execution_id in dict.fromkeys(timer.execution_id for timer in claimed)
        ]
        return Fired(sum(r.claimed for r in rounds), sum(r.fired for r in rounds))

    async def _fire(
        self,
        claimed: list[DueTimer],
        alone: uuid.UUID | None,
        uow: UnitOfWork,
        notes: Notes,
    ) -> Fired:
        """Fires the due timers (of one execution, `alone`, in a savepoint); the
        timers it claimed go into `claimed`."""
        stepper = self._stepper
        now = stepper.clock.now()
        claimed[:] = timers = await store.claim_due_timers(uow.conn, now, self.batch, alone)
        if not timers:
            return Fired(0, 0)
        triggers: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        for timer in timers:
            triggers[timer.execution_id].append(
                TimerFired(timer.token, timer.element_id, timer.repeat)
            )

        def step() -> Awaitable[Advance]:
            return stepper.advance(
                uow,
                notes,
                triggers,
                skip_locked=True,
                skip_unreadable_profiles=True,
                attribute=by_engine,
            )

        async def postpone(_: Exception) -> None:
            await store.postpone_timers(uow.conn, timers, now + SET_ASIDE)

        if alone is None:
            advanced: Advance | None = await step()
        else:
            advanced = await stepper.contained(uow, alone, step, postpone)
        if advanced is None:
            return Fired(len(timers), 0)
        # Skipped with their state loaded: the user's profile could not be read.
        unreadable = {i for i in advanced.skipped if i in advanced.states}
        postponed = [t for t in timers if t.execution_id in unreadable]
        if postponed:
            await store.postpone_timers(uow.conn, postponed, now + PROFILE_RETRY)
        return Fired(len(timers), sum(1 for t in timers if t.execution_id in advanced.runs))
