"""Time partitions created ahead of need.

There is no default partition: a row outside the created range fails loudly
(`no partition of relation ... found for row`) instead of landing somewhere it
would block later maintenance. `ensure_partitions` is idempotent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Literal

import asyncpg

Period = Literal["month", "year"]
LOCK_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class PartitionedTable:
    table: str
    period: Period
    # Periods created beyond the current one.
    ahead: int
    # Whether the partition key is a timestamptz (bounds in UTC) or a date.
    timestamped: bool = True


def period_start(day: date, period: Period) -> date:
    return date(day.year, day.month if period == "month" else 1, 1)


def shift(start: date, period: Period, count: int) -> date:
    if period == "year":
        return date(start.year + count, 1, 1)
    months = start.year * 12 + start.month - 1 + count
    return date(months // 12, months % 12 + 1, 1)


def partition_name(spec: PartitionedTable, start: date) -> str:
    suffix = (
        f"{start.year:04d}_{start.month:02d}" if spec.period == "month" else f"{start.year:04d}"
    )
    return f"{spec.table}_{suffix}"


def _bound(spec: PartitionedTable, day: date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'" if spec.timestamped else f"'{day.isoformat()}'"


async def ensure_partitions(
    conn: asyncpg.Connection, spec: PartitionedTable, today: date, behind: int = 0
) -> list[str]:
    """Creates the partitions from `behind` periods ago to `ahead` periods from now.

    Returns the names of the partitions it created. Run it as the table's owner.
    """
    first = shift(period_start(today, spec.period), spec.period, -behind)
    created = []
    for offset in range(behind + spec.ahead + 1):
        start = shift(first, spec.period, offset)
        name = partition_name(spec, start)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
        if exists:
            continue
        end = shift(start, spec.period, 1)
        await _create_without_queueing(
            conn,
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {spec.table} "
            f"FOR VALUES FROM ({_bound(spec, start)}) TO ({_bound(spec, end)})",
        )
        created.append(name)
    return created


async def _create_without_queueing(conn: asyncpg.Connection, ddl: str, attempts: int = 5) -> None:
    """Runs partition DDL with a short lock timeout, retrying, so that it never
    waits in the lock queue in front of the traffic on the parent table."""
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
                await conn.execute(ddl)
            return
        except asyncpg.LockNotAvailableError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * 2**attempt)
