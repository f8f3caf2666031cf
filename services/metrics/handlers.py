"""The metrics service's use cases: the event log (record, list, erase), the
daily rollup, and the reports read from the daily metrics.

A rollup of [first, last] reads the events of those UTC days in three passes
(counts, stage moves with dwell times, active users), replaces the event
metrics of those days (upsert on the unique key, removal of rows no longer
produced), then carries the end-of-day population forward from the day
before `first` through the last day ever rolled up, so that a late event
changes every later population. One rollup runs at a time (an advisory lock
held by its transaction, which archival also takes to detach a partition); the
schedule (workers.py) recomputes a trailing window. Days whose events were
archived are never recomputed: their metrics stay as rolled up while the
events were in the log.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime.clock import Clock
from runtime.database import Executor, connection
from runtime.errors import FailedPrecondition, InvalidArgument, OperationFailed
from runtime.isolation import item_fault, refusal_text, write_apart
from runtime.server import ServiceContext
from runtime.stages import STAGES
from services.metrics import store
from services.metrics.analytics import (
    Cohort,
    FunnelQuery,
    FunnelResult,
    RetentionQuery,
    funnel_result,
    retention_result,
)
from services.metrics.domain import (
    EVENT_METRICS,
    EVENTS_TABLE,
    POPULATION_METRICS,
    EventFilter,
    EventRows,
    LoggedEvent,
    MetricPoint,
    MetricQuery,
    RefusedEvent,
    activity_rows,
    count_rows,
    day_start,
    days_between,
    flow_rows,
    outside_partitions,
    population_rows,
    refused_outside,
    refused_rows,
    trailing_window,
)

log = logging.getLogger(__name__)

# Points one GetMetrics answer carries at most (a few MiB).
MAX_POINTS = 50_000
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


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


class Rollups:
    """The rollup of the trailing window (today and the late days before it),
    as the schedule runs it (workers.RollupScheduler) and RunRollup without dates."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock, late_days: int) -> None:
        self._pool = pool
        self._clock = clock
        self._late_days = late_days

    async def trailing(self, *, wait: bool = False) -> RollupResult | None:
        """Without `wait`, None when another rollup runs (replicas take turns)."""
        today = self._clock.now().astimezone(UTC).date()
        async with connection(self._pool) as conn:
            result = await rollup_trailing(conn, today, self._late_days, wait=wait)
        if result is not None:
            log.info(
                "rollup of %s..%s wrote %d rows", result.first, result.through, result.rows_written
            )
        return result


@dataclass
class Recorded:
    recorded: int = 0
    duplicates: int = 0
    # Events of erased users, counted anonymously instead of stored (docs/metrics.md).
    erased_users: int = 0
    # Events refused: outside the created partitions, or holding a value the
    # database refused.
    refused: list[RefusedEvent] = field(default_factory=list)

    def add(self, other: Recorded) -> None:
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.erased_users += other.erased_users
        self.refused += other.refused


class EventLog:
    """RecordEvents, ListEvents and EraseUserData."""

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def record(self, rows: EventRows) -> Recorded:
        """Stores the rows that have a partition and that the database takes; the
        others come back refused, each alone (runtime.isolation)."""
        if not rows:
            return Recorded()
        try:
            return await self._insert(rows)
        except Exception as error:
            # The only CHECK a row of the parent can fail: no partition for it.
            if not item_fault(error):
                raise
        partitions = set(await store.partitions_of(self._context.pool, EVENTS_TABLE.table))
        inside, outside = outside_partitions(rows, partitions)
        kept = rows.subset(inside)
        recorded = Recorded(refused=outside)
        parts = await write_apart(range(len(kept)), lambda some: self._insert(kept.subset(some)))
        for part in parts:
            if part.result is not None:
                recorded.add(part.result)
            else:
                assert part.error is not None
                recorded.refused += refused_rows(kept, part.items, refusal_text(part.error))
        return recorded

    async def _insert(self, rows: EventRows) -> Recorded:
        async with self._context.unit_of_work() as uow:
            await store.lock_for_ingest(uow.conn)
            stored = await store.insert_events(uow.conn, rows)
        late = len(rows) - stored.logged - len(stored.unpartitioned)
        return Recorded(
            stored.inserted,
            stored.logged - stored.inserted + late - stored.counted,
            stored.counted,
            refused_outside(rows, stored.unpartitioned),
        )

    async def read(
        self, where: EventFilter, cursor: tuple[datetime, int] | None, limit: int
    ) -> list[LoggedEvent]:
        return await store.list_events(self._context.pool, where, cursor, limit)

    async def erase_user(self, user_id: uuid.UUID) -> int:
        async with self._context.unit_of_work() as uow:
            await store.lock_for_erase(uow.conn)
            return await store.erase_user(uow.conn, user_id)


@dataclass(frozen=True)
class Snapshot:
    populations: dict[str, int]
    rolled_up_through: date | None


@dataclass(frozen=True)
class FunnelStep:
    stage: str
    entered: int
    conversion_rate: float


class Reports:
    """RunRollup, GetMetrics, GetStageFunnel, GetStageSnapshot, GetEventFunnel
    and GetRetention."""

    def __init__(self, context: ServiceContext, rollups: Rollups, clock: Clock) -> None:
        self._context = context
        self._rollups = rollups
        self._clock = clock

    async def run_rollup(self, days: tuple[date, date] | None) -> RollupResult | None:
        if days is None:
            return await self._rollups.trailing(wait=True)
        first, last = days
        async with connection(self._context.pool) as conn:
            try:
                return await rollup(conn, first, last)
            except asyncpg.CheckViolationError as error:
                # The only CHECK a daily metric can fail: no yearly partition for its day.
                raise FailedPrecondition(
                    f"the daily metrics of {first} to {last} have no partition to be written"
                    " to: partitions are made ahead by `lifecycle migrate` and"
                    " `lifecycle maintenance` for the years the suite runs in",
                    reason="NO_PARTITION",
                    metadata={"start_date": first.isoformat(), "end_date": last.isoformat()},
                ) from error

    async def metrics(self, query: MetricQuery) -> list[MetricPoint]:
        points = await store.metric_points(self._context.pool, query, MAX_POINTS + 1)
        if len(points) > MAX_POINTS:
            raise InvalidArgument.field(
                "end_date",
                f"the query matches more than {MAX_POINTS} points; narrow the range,"
                " the metric names, the stages or the dimensions",
            )
        return points

    async def funnel(self, first: date, last: date) -> list[FunnelStep]:
        """Counts distinct users and the order of their moves over the range,
        which only the log has (the daily metrics count moves per day), so a
        range reaching archived days is refused rather than counted short."""
        pool = self._context.pool
        await require_logged(pool, first)
        rows = await store.funnel(pool, day_start(first), day_start(last + timedelta(days=1)))
        return [
            FunnelStep(stage, entered, converted / previous if previous else 0.0)
            for stage, entered, previous, converted in rows
        ]

    async def event_funnel(self, query: FunnelQuery) -> FunnelResult:
        """From the log, as GetStageFunnel: a range reaching archived days is refused."""
        pool = self._context.pool
        await require_logged(pool, query.first)
        return funnel_result(query, await store.event_funnel(pool, query))

    async def retention(self, query: RetentionQuery) -> list[Cohort]:
        """Periods that have not begun yet (by the service's clock) are left out."""
        pool = self._context.pool
        await require_logged(pool, query.first)
        today = self._clock.now().astimezone(UTC).date()
        return retention_result(query, await store.retention(pool, query), today)

    async def snapshot(self) -> Snapshot:
        """The population at the end of the last whole day rolled up, plus the
        moves the log holds since (today's always come from the log)."""
        pool = self._context.pool
        yesterday = self._clock.now().astimezone(UTC).date() - timedelta(days=1)
        async with connection(pool) as conn:
            rolled = await store.last_population_day(conn, yesterday)
            base = (await store.population_on(conn, rolled) if rolled else None) or {}
            since = (
                day_start(rolled + timedelta(days=1))
                if rolled
                else datetime.min.replace(tzinfo=UTC)
            )
            flows = await store.net_flows(conn, since, _END_OF_TIME)
        return Snapshot(
            {stage: base.get(stage, 0) + flows.get(stage, 0) for stage in STAGES}, rolled
        )
