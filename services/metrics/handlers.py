"""The metrics service's use cases: the event log (record, list, erase) and the
reports read from the daily metrics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime.database import connection
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.isolation import item_fault, refusal_text, write_apart
from runtime.server import ServiceContext
from runtime.stages import STAGES
from services.metrics import store
from services.metrics.domain import (
    EVENTS_TABLE,
    EventRows,
    RefusedEvent,
    day_start,
    outside_partitions,
    refused_outside,
    refused_rows,
)
from services.metrics.rollup import (
    Clock,
    RollupResult,
    RollupScheduler,
    require_logged,
    rollup,
)
from services.metrics.store import EventFilter, MetricQuery

# Points one GetMetrics answer carries at most (a few MiB).
MAX_POINTS = 50_000
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


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
    ) -> list[asyncpg.Record]:
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
    """RunRollup, GetMetrics, GetStageFunnel and GetStageSnapshot."""

    def __init__(self, context: ServiceContext, scheduler: RollupScheduler, clock: Clock) -> None:
        self._context = context
        self._scheduler = scheduler
        self._clock = clock

    async def run_rollup(self, days: tuple[date, date] | None) -> RollupResult | None:
        if days is None:
            return await self._scheduler.run_once(wait=True)
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

    async def metrics(self, query: MetricQuery) -> list[asyncpg.Record]:
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

    async def snapshot(self) -> Snapshot:
        """The population at the end of the last whole day rolled up, plus the
        moves the log holds since (today's always come from the log)."""
        pool = self._context.pool
        yesterday = self._clock().astimezone(UTC).date() - timedelta(days=1)
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
