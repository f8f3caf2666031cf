"""The event log's SQL: RecordEvents' insert (an erased user's events counted
apart), ListEvents' query, and a user's erase."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from runtime import tombstones
from runtime.chains import as_json, stored
from runtime.database import Executor
from services.metrics.domain import EventFilter, EventRows, LoggedEvent
from services.metrics.store.common import (
    ERASED_COLUMNS,
    ERASED_FACTS,
    EVENT_COLUMNS,
    MOVE_TYPES,
)

_INSERT_EVENTS = f"""
WITH input AS (
  SELECT i.*, EXISTS (SELECT 1 FROM erased_users x WHERE x.user_id = i.user_id) AS erased
  FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
              $7::timestamptz[], $8::text[], $9::text[], $10::text[]) WITH ORDINALITY
    AS i(event_id, event_type, user_id, workflow_execution_id, lifecycle_stage, event_data,
         created_at, producer, partition_name, actors, n)
), inserted AS (
  INSERT INTO lifecycle_events ({EVENT_COLUMNS})
  SELECT event_id, event_type, user_id, workflow_execution_id, lifecycle_stage,
         event_data::jsonb, created_at, producer, NULLIF({stored("actors::jsonb")}, '{{}}')
  FROM input WHERE NOT erased
  ON CONFLICT (event_id, created_at) DO NOTHING
  RETURNING 1
), late AS (
  SELECT event_id, event_type, lifecycle_stage, event_data::jsonb AS event_data, created_at,
         to_regclass(partition_name) IS NOT NULL AS partitioned, n
  FROM input WHERE erased
), counted AS (
  -- No dwell time and no first activity: what they depend on, the user's
  -- other events, is no longer linked to the user (docs/metrics.md).
  INSERT INTO erased_events ({ERASED_COLUMNS}, first_activity_in_stage, first_activity_of_day)
  SELECT {ERASED_FACTS}, false, false FROM late WHERE partitioned
  ON CONFLICT (event_key) DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM input WHERE NOT erased) AS logged,
       (SELECT count(*) FROM inserted) AS inserted,
       (SELECT count(*) FROM counted) AS counted,
       ARRAY(SELECT n - 1 FROM late WHERE NOT partitioned ORDER BY n) AS unpartitioned
"""


@dataclass(frozen=True)
class Insertion:
    """What became of a batch: rows of users not erased (or of no user) go to the
    log, rows of erased users to erased_events (docs/metrics.md, "Erasing a user")."""

    logged: int
    inserted: int
    # Rows of erased users counted now; the others were counted already.
    counted: int
    # Offsets of rows of erased users whose month has no partition, refused.
    unpartitioned: list[int]


async def insert_events(conn: asyncpg.Connection, rows: EventRows) -> Insertion:
    """Stores the rows not stored yet, each where its user's erase wants it."""
    if not rows:
        return Insertion(0, 0, 0, [])
    record = await conn.fetchrow(
        _INSERT_EVENTS,
        rows.event_ids,
        rows.event_types,
        rows.user_ids,
        rows.execution_ids,
        rows.stages,
        rows.data,
        rows.times,
        rows.producers,
        rows.partitions(),
        as_json(rows.actors),
    )
    assert record is not None
    return Insertion(
        record["logged"], record["inserted"], record["counted"], list(record["unpartitioned"])
    )


def list_events_query(
    where: EventFilter, cursor: tuple[datetime, int] | None, limit: int
) -> tuple[str, list[Any]]:
    """The audit log query with only the conditions asked for, so that the
    planner prunes the partitions outside the time range (a condition like
    `$1 IS NULL OR created_at >= $1` would defeat pruning)."""
    conditions: list[str] = []
    args: list[Any] = []

    def add(template: str, value: Any) -> None:
        args.append(value)
        conditions.append(template.format(f"${len(args)}"))

    if where.user_id is not None:
        add("user_id = {}", where.user_id)
    if where.event_types:
        add("event_type = ANY({}::text[])", list(where.event_types))
    if where.stages:
        add("lifecycle_stage = ANY({}::text[])", list(where.stages))
    if where.workflow_execution_id is not None:
        add("workflow_execution_id = {}", where.workflow_execution_id)
    if where.actor is not None:
        add("actors @> ARRAY[{}::text]", where.actor)
    if where.start_time is not None:
        add("created_at >= {}", where.start_time)
    if where.end_time is not None:
        add("created_at < {}", where.end_time)
    if cursor is not None:
        add("created_at <= {}", cursor[0])
        args.append(cursor[1])
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = (
        f"SELECT id, {EVENT_COLUMNS} FROM lifecycle_events"
        f" WHERE {' AND '.join(conditions) or 'true'}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    )
    return sql, args


async def list_events(
    conn: Executor, where: EventFilter, cursor: tuple[datetime, int] | None, limit: int
) -> list[LoggedEvent]:
    sql, args = list_events_query(where, cursor, limit)
    return [
        LoggedEvent(
            id=row["id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            user_id=row["user_id"],
            workflow_execution_id=row["workflow_execution_id"],
            stage=row["lifecycle_stage"],
            data=row["event_data"],
            created_at=row["created_at"],
            producer=row["producer"],
            actors=tuple(row["actors"] or ()),
        )
        for row in await conn.fetch(sql, *args)
    ]


# Deletes the user's events and keeps, for each, what the rollup counts of it,
# computed as the rollup does over the user's whole history: the dwell time
# since the previous move, and whether the event was the user's first tracked
# activity of its day (in its stage, and in all stages).
_ERASE = f"""
WITH gone AS (
  DELETE FROM lifecycle_events WHERE user_id = $1
  RETURNING id, event_id, event_type, lifecycle_stage, event_data, created_at
), facts AS (
  SELECT id, created_at, {ERASED_FACTS},
         event_type IN {MOVE_TYPES} AS move, event_type LIKE 'tracked.%' AS tracked
  FROM gone
), ordered AS (
  SELECT *,
         lag(created_at) OVER (PARTITION BY move ORDER BY created_at, id) AS previous_move,
         row_number() OVER (PARTITION BY tracked, event_day, lifecycle_stage
                            ORDER BY created_at, id) AS nth_in_stage,
         row_number() OVER (PARTITION BY tracked, event_day ORDER BY created_at, id) AS nth_of_day
  FROM facts
)
INSERT INTO erased_events ({ERASED_COLUMNS}, dwell_seconds, first_activity_in_stage,
                           first_activity_of_day)
SELECT {ERASED_COLUMNS},
       CASE WHEN from_stage IS NOT NULL THEN extract(epoch FROM created_at - previous_move) END,
       tracked AND nth_in_stage = 1, tracked AND nth_of_day = 1
FROM ordered
"""


async def erase_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Records the tombstone and deletes the user's events, keeping what the
    daily metrics count of them in erased_events; returns how many."""
    await tombstones.bury(conn, user_id)
    status = await conn.execute(_ERASE, user_id)
    return int(status.split()[-1])
