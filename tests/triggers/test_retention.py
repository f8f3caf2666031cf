"""Retention on an injected date: whole monthly partitions of trigger_executions
go once every row in them is older than 90 days, and nothing younger is lost."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime.migrations import acting_as
from runtime.partitions import ensure_partitions, partition_name, period_start, shift
from services.triggers.maintenance import EVENTS_PER_DELETE, maintenance
from services.triggers.service import EXECUTIONS
from suite.registry import schema_owners
from tests.support import ScratchDatabase


@asynccontextmanager
async def as_triggers(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection acting as the triggers role in its schema, as maintenance runs."""
    [owner] = [o for o in schema_owners(database.admin_url, env={}) if o.schema == "triggers"]
    conn = await asyncpg.connect(database.admin_url)
    try:
        async with acting_as(conn, owner):
            yield conn
    finally:
        await conn.close()


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def test_maintenance_drops_only_partitions_whose_every_row_is_older_than_90_days(
    database: ScratchDatabase,
) -> None:
    today = date.today()
    months = [shift(period_start(today, "month"), "month", -n) for n in range(6, 0, -1)]
    async with as_triggers(database) as conn:
        await ensure_partitions(conn, EXECUTIONS, today, behind=6)
        trigger_id = await conn.fetchval(
            "INSERT INTO triggers (name, event_type, conditions, workflow_id)"
            " VALUES ('retention', 'old', '{}', $1) RETURNING id",
            uuid.uuid4(),
        )
        # The first and the last moment of each past month.
        moments = [midnight(m) for m in months]
        moments += [midnight(shift(m, "month", 1)) - timedelta(microseconds=1) for m in months]
        await conn.execute(
            "INSERT INTO trigger_executions (trigger_id, condition_met, executed_at)"
            " SELECT $1, true, unnest($2::timestamptz[])",
            trigger_id,
            moments,
        )
        cutoff = midnight(today) - timedelta(days=90)
        oldest = partition_name(EXECUTIONS, months[0])
        reader = await asyncpg.connect(database.admin_url)
        try:
            # A reader of the oldest partition: its drop does not queue behind it.
            async with reader.transaction():
                await reader.execute(f"LOCK TABLE triggers.{oldest} IN ACCESS SHARE MODE")
                busy = await maintenance(conn, today)
        finally:
            await reader.close()
        assert f"kept {oldest} for the next run: its table was busy" in busy
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", oldest)
        lines = await maintenance(conn, today)
        left = {
            r["executed_at"]
            for r in await conn.fetch(
                "SELECT executed_at FROM trigger_executions WHERE trigger_id = $1", trigger_id
            )
        }
        partitions = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'trigger_executions'::regclass"
            )
        }
    dropped = [m for m in months if midnight(shift(m, "month", 1)) <= cutoff]
    kept = [m for m in months if m not in dropped]
    assert dropped and kept
    assert {partition_name(EXECUTIONS, m) for m in dropped}.isdisjoint(partitions)
    assert {partition_name(EXECUTIONS, m) for m in kept} <= partitions
    assert {moment for moment in moments if moment >= cutoff} <= left
    # The partition holding the cutoff keeps its older rows too: it has younger ones.
    assert {moment for moment in moments if moment.date() >= kept[0]} == left
    assert any(moment < cutoff for moment in left)
    assert busy[0].startswith(f"dropped {len(dropped) - 1} trigger_executions partitions")
    assert lines[0].endswith(f": {oldest}")


async def test_maintenance_deletes_every_event_past_its_retention_in_batches(
    own_database: ScratchDatabase,
) -> None:
    """Events as the API stores them (received_at = when stored, so ids grow
    with it): more than one delete batch of old ones, then younger ones."""
    today = date.today()
    old_count = EVENTS_PER_DELETE + 10
    received = [midnight(today) - timedelta(days=31)] * old_count + [
        midnight(today) - timedelta(days=29),
        datetime.now(UTC),
    ]
    ids = [f"event-{n}" for n in range(len(received))]
    async with as_triggers(own_database) as conn:
        await conn.execute(
            "INSERT INTO events (message_id, user_id, event_type, data, event_time, received_at)"
            " SELECT m, $3, 'old', '{}', t, t"
            " FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS x(m, t, n)"
            " ORDER BY n",
            ids,
            received,
            uuid.uuid4(),
        )
        lines = await maintenance(conn, today)
        left = [r["message_id"] for r in await conn.fetch("SELECT message_id FROM events")]
    assert sorted(left) == ids[old_count:]
    assert f"deleted {old_count} events received before" in lines[1]
