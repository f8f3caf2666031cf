"""What every part of the metrics store shares: the advisory locks, the
event log's columns, and the SQL expressions that read the facts the daily
metrics count of an event (also kept of an erased user's events)."""

from __future__ import annotations

import asyncpg

from runtime.database import Executor
from services.metrics.domain import BREAKDOWNS, CREATED, ERASED, STAGE_CHANGED

# Advisory lock keys ("lm" + a letter): ingest and erase exclude each other so
# that no event of an erased user lands after the erase; one rollup at a time,
# and no archival while a rollup reads the log.
ERASE_LOCK = 0x6C6D_0065
ROLLUP_LOCK = 0x6C6D_0072
EVENT_COLUMNS = (
    "event_id, event_type, user_id, workflow_execution_id, lifecycle_stage, event_data,"
    " created_at, producer, actors"
)


async def lock_for_ingest(conn: asyncpg.Connection) -> None:
    """Taken before RecordEvents reads the tombstones; an erase waits for it."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ERASE_LOCK)


async def lock_for_erase(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ERASE_LOCK)


async def lock_rollups(conn: asyncpg.Connection) -> None:
    """Held until the transaction ends by a rollup, and by archival from the
    detach of a partition on, so that no rollup reads a log losing days."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)


async def try_lock_rollups(conn: asyncpg.Connection) -> bool:
    """lock_rollups, unless another transaction holds it (False)."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ROLLUP_LOCK)
    return taken


DAY = "(created_at AT TIME ZONE 'UTC')::date"
SUBJECT = (
    "CASE event_type "
    + " ".join(
        f"WHEN '{event_type}' THEN event_data->>'{key}'" for event_type, key in BREAKDOWNS.items()
    )
    + " END"
)
MOVE_TYPES = f"('{CREATED}', '{STAGE_CHANGED}', '{ERASED}')"
# The stage a move leaves and the stage it enters (NULL for other events).
FROM_STAGE = (
    f"CASE event_type WHEN '{STAGE_CHANGED}' THEN event_data->>'from_stage'"
    f" WHEN '{ERASED}' THEN lifecycle_stage END"
)
TO_STAGE = f"CASE WHEN event_type IN ('{CREATED}', '{STAGE_CHANGED}') THEN lifecycle_stage END"
# erased_events of the UTC days in [$1, $2), both day starts.
ERASED_DAYS = (
    "event_day >= ($1 AT TIME ZONE 'UTC')::date AND event_day < ($2 AT TIME ZONE 'UTC')::date"
)
# The identity of an event (its id and time, the log's unique key) as
# erased_events keeps it: a digest, to count an erased user's event once.
_EVENT_KEY = (
    "sha256(convert_to(event_id::text || ' ' || extract(epoch FROM created_at)::text, 'UTF8'))"
)
# What erased_events keeps of an event, whoever it was about, in the order of
# ERASED_COLUMNS.
ERASED_COLUMNS = "event_key, event_day, event_type, lifecycle_stage, subject, from_stage, to_stage"
ERASED_FACTS = (
    f"{_EVENT_KEY} AS event_key, {DAY} AS event_day, event_type, lifecycle_stage,"
    f" {SUBJECT} AS subject, {FROM_STAGE} AS from_stage, {TO_STAGE} AS to_stage"
)


async def partitions_of(conn: Executor, table: str) -> list[str]:
    """The names of a partitioned table's partitions, in order."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass($1) ORDER BY c.relname",
        table,
    )
    return [r["relname"] for r in rows]
