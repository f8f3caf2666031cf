"""Timers: rows with a due time, claimed by the timer worker of any replica."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from runtime.database import Executor


@dataclass(frozen=True)
class DueTimer:
    execution_id: uuid.UUID
    token: int
    element_id: str
    due_at: datetime
    # Repetitions of a cycle left after this one; None for unbounded.
    repeat: int | None


async def claim_due_timers(
    conn: asyncpg.Connection, now: datetime, limit: int, execution_id: uuid.UUID | None = None
) -> list[DueTimer]:
    """Due timers (of one execution, if given) that no other transaction holds."""
    rows = await conn.fetch(
        "SELECT execution_id, token, element_id, due_at, repeat FROM timers"
        " WHERE due_at <= $1 AND ($3::uuid IS NULL OR execution_id = $3)"
        " ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
        execution_id,
    )
    return [DueTimer(*row) for row in rows]


async def next_due(conn: Executor) -> datetime | None:
    due: datetime | None = await conn.fetchval("SELECT min(due_at) FROM timers")
    return due


async def postpone_timers(
    conn: asyncpg.Connection, timers: Sequence[DueTimer], until: datetime
) -> None:
    await conn.execute(
        "UPDATE timers t SET due_at = $4 FROM unnest($1::uuid[], $2::int[], $3::text[])"
        " AS r(id, token, element) WHERE t.execution_id = r.id AND t.token = r.token"
        " AND t.element_id = r.element",
        [t.execution_id for t in timers],
        [t.token for t in timers],
        [t.element_id for t in timers],
        until,
    )
