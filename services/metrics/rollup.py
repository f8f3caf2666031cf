"""The daily rollup: metrics_daily recomputed from the event log, idempotently.

A rollup of [first, last] reads the events of those UTC days in three passes
(counts, stage moves with dwell times, active users), replaces the event
metrics of those days (upsert on the unique key, removal of rows no longer
produced), then carries the end-of-day population forward from the day
before `first` through the last day ever rolled up, so that a late event
changes every later population. One rollup runs at a time (an advisory lock
held by its transaction, which archival also takes to detach a partition); the
scheduler recomputes a trailing window. Days whose events were archived are
never recomputed: their metrics stay as rolled up while the events were in
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime.database import Executor, connection
from runtime.errors import FailedPrecondition, OperationFailed
from services.metrics import store
from services.metrics.domain import (
    EVENT_METRICS,
    POPULATION_METRICS,
    activity_rows,
    count_rows,
    day_start,
    days_between,
    flow_rows,
    population_rows,
    trailing_window,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)


def system_clock() -> datetime:
    return datetime.now(UTC)


class ArchivedDays(FailedPrecondition, OperationFailed):
    """A date range reaches days whose events were archived: what is computed
    from the event log cannot be computed for them."""


async def require_logged(conn: Executor, first: date) -> None:
    """Refuses a range starting before the first day the event log holds whole."""
    since = await store.logged_since(conn)
    if since is not None and first < since:
        raise ArchivedDays(
            f"{first} is before {since}, the oldest day whose events are still in the log:"
            " the events of earlier days were archived (their daily metrics are kept, see"
            f" GetMetrics); start the range on {since} or later",
            reason="EVENTS_ARCHIVED",
            metadata={"logged_since": since.isoformat()},
        )


@dataclass(frozen=True)
class RollupResult:
    first: date
    # The last day written: `last` of the request, or later when the
    # population of later days changed with it.
    through: date
    rows_written: int

    @property
    def days(self) -> int:
        return (self.through - self.first).days + 1


async def rollup(
    conn: asyncpg.Connection, first: date, last: date, *, wait: bool = True
) -> RollupResult | None:
    """Recomputes [first, last]. Without `wait`, returns None when another rollup runs."""
    async with conn.transaction():
        if not await _take_turn(conn, wait):
            return None
        return await _recompute(conn, first, last)


async def _take_turn(conn: asyncpg.Connection, wait: bool) -> bool:
    if wait:
        await store.lock_rollups(conn)
        return True
    return await store.try_lock_rollups(conn)


async def _recompute(conn: asyncpg.Connection, first: date, last: date) -> RollupResult:
    """Refuses (ArchivedDays) a range whose first days were archived: recomputed
    from a log without their events, their metrics would be erased. Checked
    under the rollups' lock, which archival takes to detach a partition, so no
    partition goes while the rollup reads."""
    await require_logged(conn, first)
    start, end = day_start(first), day_start(last + timedelta(days=1))
    rows = (
        count_rows(await store.count_events(conn, start, end))
        + flow_rows(await store.moves(conn, start, end))
        + activity_rows(await store.active_users(conn, start, end))
    )
    written = await store.replace_metrics(conn, first, last, EVENT_METRICS, rows)
    through = max(last, await store.last_population_day(conn) or last)
    written += await _carry_population(conn, first, through)
    return RollupResult(first, through, written)


async def _carry_population(conn: asyncpg.Connection, first: date, through: date) -> int:
    before = first - timedelta(days=1)
    base = await store.population_on(conn, before)
    if base is None:
        # Never rolled up before `first`: every move the log holds until then.
        base = await store.net_flows(conn, _BEGINNING, day_start(first))
    net_flow, conversions = await store.stored_flows(conn, first, through)
    rows = population_rows(days_between(first, through), base, net_flow, conversions)
    return await store.replace_metrics(conn, first, through, POPULATION_METRICS, rows)


async def rollup_trailing(
    conn: asyncpg.Connection, today: date, late_days: int, *, wait: bool = True
) -> RollupResult | None:
    """Recomputes today and the `late_days` before it, and any day since the
    last rollup (or since the first event, when there was none). The window is
    taken under the rollups' lock, after any archival that held it."""
    async with conn.transaction():
        if not await _take_turn(conn, wait):
            return None
        window = trailing_window(
            today,
            late_days,
            await store.last_population_day(conn, today),
            await store.first_event_day(conn),
            await store.logged_since(conn),
        )
        return None if window is None else await _recompute(conn, *window)


class RollupScheduler:
    """Recomputes the trailing window every `interval` seconds; replicas take
    turns through the rollup's advisory lock (a busy lock skips the round)."""

    name = "metrics-rollup"

    def __init__(self, pool: asyncpg.Pool, clock: Clock, interval: float, late_days: int) -> None:
        self._pool = pool
        self._clock = clock
        self._interval = interval
        self._late_days = late_days

    async def run_once(self, *, wait: bool = False) -> RollupResult | None:
        today = self._clock().astimezone(UTC).date()
        async with connection(self._pool) as conn:
            result = await rollup_trailing(conn, today, self._late_days, wait=wait)
        if result is not None:
            log.info(
                "rollup of %s..%s wrote %d rows", result.first, result.through, result.rows_written
            )
        return result

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("scheduled rollup failed, retrying next round: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)
