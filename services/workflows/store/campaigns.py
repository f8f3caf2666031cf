"""Recurring campaigns' cycles (campaign_cycles): scheduled while their
workflow is active, then run a page of segment members at a time."""

from __future__ import annotations

import uuid
from dataclasses import astuple, dataclass
from datetime import datetime

import asyncpg

from runtime.database import Executor

SCHEDULED, RUNNING, COMPLETED, FAILED = "scheduled", "running", "completed", "failed"


@dataclass(frozen=True)
class CycleRow:
    workflow_id: uuid.UUID
    due_at: datetime
    workflow_version: str
    segment_id: uuid.UUID
    cycle: str
    # Cycles left after this one; None: unbounded.
    repetitions_left: int | None
    status: str
    page_token: str
    started_count: int
    failures: int
    error_message: str | None
    actors: tuple[str, ...]
    finished_at: datetime | None


# For `lifecycle outbox`: the cycles that wait for the segments service (their
# last ListSegmentMembers failed), in the rows of every outbox report.
WAITING_CYCLES = """
SELECT 'pending' AS kind, 'segments.list_segment_members' AS topic, count(*) AS messages,
       min(due_at) AS oldest, max(error_message) AS last_error
FROM campaign_cycles WHERE status = 'running' AND error_message IS NOT NULL
GROUP BY 1, 2
"""

_COLUMNS = (
    "workflow_id, due_at, workflow_version, segment_id, cycle, repetitions_left, status,"
    " page_token, started_count, failures, error_message, actors, finished_at"
)


def _row(row: asyncpg.Record) -> CycleRow:
    values = dict(row)
    values["actors"] = tuple(values["actors"])
    return CycleRow(**values)


async def schedule(conn: asyncpg.Connection, cycle: CycleRow) -> None:
    """Makes `cycle` its workflow's scheduled one, in place of any other; a
    cycle of that moment that exists already stays as it is."""
    await conn.execute(
        "DELETE FROM campaign_cycles WHERE workflow_id = $1 AND status = 'scheduled'",
        cycle.workflow_id,
    )
    await conn.execute(
        f"INSERT INTO campaign_cycles ({_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT DO NOTHING",
        *astuple(cycle),  # the fields are in the order of the columns
    )


async def unschedule(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> None:
    """No more cycles of the workflow; a cycle that began goes on."""
    await conn.execute(
        "DELETE FROM campaign_cycles WHERE workflow_id = $1 AND status = 'scheduled'", workflow_id
    )


async def last_due(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> datetime | None:
    """The moment of the workflow's latest cycle that began, if any."""
    due: datetime | None = await conn.fetchval(
        "SELECT max(due_at) FROM campaign_cycles WHERE workflow_id = $1 AND status <> 'scheduled'",
        workflow_id,
    )
    return due


async def due_cycle(conn: Executor, now: datetime) -> CycleRow | None:
    """The cycle that has been due longest (scheduled, or running and not
    resting after a failed call)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM campaign_cycles WHERE status IN ('scheduled', 'running')"
        " AND coalesce(retry_at, due_at) <= $1 ORDER BY coalesce(retry_at, due_at) LIMIT 1",
        now,
    )
    return None if row is None else _row(row)


async def next_due(conn: Executor) -> datetime | None:
    due: datetime | None = await conn.fetchval(
        "SELECT min(coalesce(retry_at, due_at)) FROM campaign_cycles"
        " WHERE status IN ('scheduled', 'running')"
    )
    return due


async def lock_workflow(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> None:
    """The workflow's row, shared: a status move or a new version (which lock it
    alone) waits for the cycle that begins, then sees the next one it scheduled."""
    await conn.execute("SELECT 1 FROM workflows WHERE id = $1 FOR SHARE", workflow_id)


async def lock_cycle(conn: asyncpg.Connection, seen: CycleRow) -> CycleRow | None:
    """The cycle, locked, if it is still as `seen` (no other replica moved it
    meanwhile); None otherwise."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM campaign_cycles WHERE workflow_id = $1 AND due_at = $2"
        " AND status = $3 AND page_token = $4 FOR UPDATE SKIP LOCKED",
        seen.workflow_id,
        seen.due_at,
        seen.status,
        seen.page_token,
    )
    return None if row is None else _row(row)


async def set_running(conn: asyncpg.Connection, cycle: CycleRow) -> None:
    await conn.execute(
        "UPDATE campaign_cycles SET status = 'running' WHERE workflow_id = $1 AND due_at = $2",
        cycle.workflow_id,
        cycle.due_at,
    )


async def advance(
    conn: asyncpg.Connection, cycle: CycleRow, page_token: str, started: int, now: datetime
) -> None:
    """A page done: the cursor moves on (an empty one: the cycle is completed)."""
    await conn.execute(
        "UPDATE campaign_cycles SET page_token = $3, started_count = started_count + $4,"
        " failures = 0, retry_at = NULL, error_message = NULL,"
        " status = CASE WHEN $3 = '' THEN 'completed' ELSE 'running' END,"
        " finished_at = CASE WHEN $3 = '' THEN $5::timestamptz END"
        " WHERE workflow_id = $1 AND due_at = $2",
        cycle.workflow_id,
        cycle.due_at,
        page_token,
        started,
        now,
    )


async def rest(conn: Executor, cycle: CycleRow, until: datetime, error_message: str) -> None:
    """A call the cycle needs failed for now: tried again at `until`."""
    await conn.execute(
        "UPDATE campaign_cycles SET retry_at = $3, failures = failures + 1, error_message = $4"
        " WHERE workflow_id = $1 AND due_at = $2 AND status = 'running'",
        cycle.workflow_id,
        cycle.due_at,
        until,
        error_message,
    )


async def fail(conn: Executor, cycle: CycleRow, error_message: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE campaign_cycles SET status = 'failed', error_message = $3, finished_at = $4,"
        " retry_at = NULL WHERE workflow_id = $1 AND due_at = $2 AND status = 'running'",
        cycle.workflow_id,
        cycle.due_at,
        error_message,
        now,
    )


async def restart_pages(conn: Executor, cycle: CycleRow) -> None:
    """The cycle's cursor from the first page again (its page token was refused)."""
    await conn.execute(
        "UPDATE campaign_cycles SET page_token = '' WHERE workflow_id = $1 AND due_at = $2"
        " AND status = 'running'",
        cycle.workflow_id,
        cycle.due_at,
    )


async def recent_cycles(conn: Executor, workflow_id: uuid.UUID, limit: int) -> list[CycleRow]:
    """The workflow's cycles, the scheduled one first, then the latest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM campaign_cycles WHERE workflow_id = $1"
        " ORDER BY status = 'scheduled' DESC, due_at DESC LIMIT $2",
        workflow_id,
        limit,
    )
    return [_row(row) for row in rows]


async def delete_ended(conn: asyncpg.Connection, before: datetime) -> int:
    """Cycles that ended before `before` (retention); how many were deleted."""
    result = await conn.execute(
        "DELETE FROM campaign_cycles WHERE status IN ('completed', 'failed') AND finished_at < $1",
        before,
    )
    return int(result.split()[-1])
