"""The metrics service's SQL. Every function runs on the connection it is given,
inside the caller's transaction where one is open."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from runtime import tombstones
from runtime.chains import stored
from runtime.database import Executor
from runtime.migrations import quote_identifier
from runtime.stages import STAGES
from services.metrics.domain import (
    BREAKDOWNS,
    CREATED,
    ERASED,
    STAGE_CHANGED,
    EventCount,
    EventRows,
    MetricRow,
    Moves,
)

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


_DAY = "(created_at AT TIME ZONE 'UTC')::date"
_SUBJECT = (
    "CASE event_type "
    + " ".join(
        f"WHEN '{event_type}' THEN event_data->>'{key}'" for event_type, key in BREAKDOWNS.items()
    )
    + " END"
)
_MOVE_TYPES = f"('{CREATED}', '{STAGE_CHANGED}', '{ERASED}')"
# The stage a move leaves and the stage it enters (NULL for other events).
_FROM_STAGE = (
    f"CASE event_type WHEN '{STAGE_CHANGED}' THEN event_data->>'from_stage'"
    f" WHEN '{ERASED}' THEN lifecycle_stage END"
)
_TO_STAGE = f"CASE WHEN event_type IN ('{CREATED}', '{STAGE_CHANGED}') THEN lifecycle_stage END"
# erased_events of the UTC days in [$1, $2), both day starts.
_ERASED_DAYS = (
    "event_day >= ($1 AT TIME ZONE 'UTC')::date AND event_day < ($2 AT TIME ZONE 'UTC')::date"
)
# The identity of an event (its id and time, the log's unique key) as
# erased_events keeps it: a digest, to count an erased user's event once.
_EVENT_KEY = (
    "sha256(convert_to(event_id::text || ' ' || extract(epoch FROM created_at)::text, 'UTF8'))"
)
# What erased_events keeps of an event, whoever it was about, in the order of
# _ERASED_COLUMNS.
_ERASED_COLUMNS = "event_key, event_day, event_type, lifecycle_stage, subject, from_stage, to_stage"
_ERASED_FACTS = (
    f"{_EVENT_KEY} AS event_key, {_DAY} AS event_day, event_type, lifecycle_stage,"
    f" {_SUBJECT} AS subject, {_FROM_STAGE} AS from_stage, {_TO_STAGE} AS to_stage"
)

_INSERT_EVENTS = f"""
WITH input AS (
  SELECT i.*, EXISTS (SELECT 1 FROM erased_users x WHERE x.user_id = i.user_id) AS erased
  FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
              $7::timestamptz[], $8::text[], $9::text[], $10::jsonb[]) WITH ORDINALITY
    AS i(event_id, event_type, user_id, workflow_execution_id, lifecycle_stage, event_data,
         created_at, producer, partition_name, actors, n)
), inserted AS (
  INSERT INTO lifecycle_events ({EVENT_COLUMNS})
  SELECT event_id, event_type, user_id, workflow_execution_id, lifecycle_stage,
         event_data::jsonb, created_at, producer, NULLIF({stored("actors")}, '{{}}')
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
  INSERT INTO erased_events ({_ERASED_COLUMNS}, first_activity_in_stage, first_activity_of_day)
  SELECT {_ERASED_FACTS}, false, false FROM late WHERE partitioned
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
        rows.actors,
    )
    assert record is not None
    return Insertion(
        record["logged"], record["inserted"], record["counted"], list(record["unpartitioned"])
    )


async def partitions_of(conn: Executor, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass($1) ORDER BY c.relname",
        table,
    )
    return [r["relname"] for r in rows]


@dataclass(frozen=True)
class EventFilter:
    user_id: uuid.UUID | None = None
    event_types: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    workflow_execution_id: uuid.UUID | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Events whose actors include it.
    actor: str | None = None


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
) -> list[asyncpg.Record]:
    sql, args = list_events_query(where, cursor, limit)
    return await conn.fetch(sql, *args)


# Deletes the user's events and keeps, for each, what the rollup counts of it,
# computed as the rollup does over the user's whole history: the dwell time
# since the previous move, and whether the event was the user's first tracked
# activity of its day (in its stage, and in all stages).
_ERASE = f"""
WITH gone AS (
  DELETE FROM lifecycle_events WHERE user_id = $1
  RETURNING id, event_id, event_type, lifecycle_stage, event_data, created_at
), facts AS (
  SELECT id, created_at, {_ERASED_FACTS},
         event_type IN {_MOVE_TYPES} AS move, event_type LIKE 'tracked.%' AS tracked
  FROM gone
), ordered AS (
  SELECT *,
         lag(created_at) OVER (PARTITION BY move ORDER BY created_at, id) AS previous_move,
         row_number() OVER (PARTITION BY tracked, event_day, lifecycle_stage
                            ORDER BY created_at, id) AS nth_in_stage,
         row_number() OVER (PARTITION BY tracked, event_day ORDER BY created_at, id) AS nth_of_day
  FROM facts
)
INSERT INTO erased_events ({_ERASED_COLUMNS}, dwell_seconds, first_activity_in_stage,
                           first_activity_of_day)
SELECT {_ERASED_COLUMNS},
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


async def remove_erased(conn: asyncpg.Connection, table: str) -> int:
    """Deletes, from a table of restored events, the users erased since they were archived."""
    status = await conn.execute(
        f"DELETE FROM {quote_identifier(table)} t USING erased_users x WHERE t.user_id = x.user_id"
    )
    return int(status.split()[-1])


async def forget_erased_events(conn: asyncpg.Connection, first: date, end: date) -> None:
    """Deletes the erased_events of [first, end), whose events are archived."""
    await conn.execute(
        "DELETE FROM erased_events WHERE event_day >= $1 AND event_day < $2", first, end
    )


# The rollup's three passes over the events of [$1, $2), the log's and the erased ones.
_COUNT_EVENTS = f"""
SELECT day, event_type, lifecycle_stage, subject,
       GROUPING(lifecycle_stage, subject) AS grouping, count(*) AS count
FROM (
  SELECT {_DAY} AS day, event_type, lifecycle_stage, {_SUBJECT} AS subject
  FROM lifecycle_events WHERE created_at >= $1 AND created_at < $2
  UNION ALL
  SELECT event_day, event_type, lifecycle_stage, subject FROM erased_events WHERE {_ERASED_DAYS}
) e
GROUP BY GROUPING SETS ((day, event_type), (day, event_type, lifecycle_stage),
                        (day, event_type, subject))
"""
_GROUPINGS = {3: "all", 1: "stage", 2: "subject"}


async def count_events(
    conn: asyncpg.Connection, start: datetime, end: datetime
) -> list[EventCount]:
    return [
        EventCount(
            r["day"],
            r["event_type"],
            _GROUPINGS[r["grouping"]],
            r["lifecycle_stage"],
            r["subject"],
            r["count"],
        )
        for r in await conn.fetch(_COUNT_EVENTS, start, end)
    ]


_MOVES = f"""
WITH moves AS (
  SELECT id, user_id, created_at, {_FROM_STAGE} AS from_stage, {_TO_STAGE} AS to_stage
  FROM lifecycle_events
  WHERE event_type IN {_MOVE_TYPES} AND created_at >= $1 AND created_at < $2
), timed AS (
  SELECT {_DAY} AS day, from_stage, to_stage,
         CASE WHEN from_stage IS NOT NULL AND user_id IS NOT NULL THEN extract(epoch FROM
           created_at - coalesce(
             lag(created_at) OVER (PARTITION BY user_id ORDER BY created_at, id),
             (SELECT max(p.created_at) FROM lifecycle_events p
              WHERE p.user_id = moves.user_id AND p.created_at < $1
                AND p.event_type IN ('{CREATED}', '{STAGE_CHANGED}'))))
         END AS dwell
  FROM moves
  UNION ALL
  SELECT event_day, from_stage, to_stage, dwell_seconds FROM erased_events
  WHERE event_type IN {_MOVE_TYPES} AND {_ERASED_DAYS}
)
SELECT day, from_stage, to_stage, GROUPING(to_stage) = 1 AS all_targets, count(*) AS count,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY dwell) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY dwell) AS p90
FROM timed GROUP BY GROUPING SETS ((day, from_stage, to_stage), (day, from_stage))
"""


async def moves(conn: asyncpg.Connection, start: datetime, end: datetime) -> list[Moves]:
    return [
        Moves(
            r["day"],
            r["from_stage"],
            r["to_stage"],
            r["all_targets"],
            r["count"],
            r["p50"],
            r["p90"],
        )
        for r in await conn.fetch(_MOVES, start, end)
    ]


_ACTIVE_USERS = f"""
SELECT day, lifecycle_stage, across, sum(users)::bigint AS users FROM (
  SELECT day, lifecycle_stage, GROUPING(lifecycle_stage) = 1 AS across,
         count(DISTINCT user_id) AS users
  FROM (
    SELECT {_DAY} AS day, lifecycle_stage, user_id FROM lifecycle_events
    WHERE event_type LIKE 'tracked.%' AND user_id IS NOT NULL
      AND created_at >= $1 AND created_at < $2
  ) e
  GROUP BY GROUPING SETS ((day), (day, lifecycle_stage))
  UNION ALL
  SELECT event_day, lifecycle_stage, false, count(*) FROM erased_events
  WHERE first_activity_in_stage AND {_ERASED_DAYS} GROUP BY event_day, lifecycle_stage
  UNION ALL
  SELECT event_day, NULL, true, count(*) FROM erased_events
  WHERE first_activity_of_day AND {_ERASED_DAYS} GROUP BY event_day
) a
GROUP BY day, lifecycle_stage, across
"""


async def active_users(
    conn: asyncpg.Connection, start: datetime, end: datetime
) -> list[tuple[date, str | None, bool, int]]:
    return [
        (r["day"], r["lifecycle_stage"], r["across"], r["users"])
        for r in await conn.fetch(_ACTIVE_USERS, start, end)
    ]


_REPLACE_METRICS = """
WITH fresh AS (
  SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS f(metric_date, lifecycle_stage, metric_name, dimensions, metric_value)
), removed AS (
  DELETE FROM metrics_daily m
  WHERE m.metric_date BETWEEN $6 AND $7 AND m.metric_name = ANY($8::text[])
    AND NOT EXISTS (
      SELECT 1 FROM fresh f
      WHERE f.metric_date = m.metric_date AND f.lifecycle_stage = m.lifecycle_stage
        AND f.metric_name = m.metric_name AND f.dimensions::jsonb = m.dimensions)
  RETURNING 1
), written AS (
  INSERT INTO metrics_daily (metric_date, lifecycle_stage, metric_name, dimensions, metric_value)
  SELECT metric_date, lifecycle_stage, metric_name, dimensions::jsonb, metric_value::numeric
  FROM fresh
  ON CONFLICT (metric_date, lifecycle_stage, metric_name, dimensions)
  DO UPDATE SET metric_value = excluded.metric_value
  WHERE metrics_daily.metric_value IS DISTINCT FROM excluded.metric_value
  RETURNING 1
)
SELECT (SELECT count(*) FROM removed) + (SELECT count(*) FROM written)
"""


async def replace_metrics(
    conn: asyncpg.Connection,
    first: date,
    last: date,
    names: Sequence[str],
    rows: Sequence[MetricRow],
) -> int:
    """Makes the `names` metrics of [first, last] exactly `rows`: upserts on the
    unique key, removes rows no longer produced. Returns rows inserted, changed
    or removed."""
    changed: int = await conn.fetchval(
        _REPLACE_METRICS,
        [r.day for r in rows],
        [r.stage for r in rows],
        [r.name for r in rows],
        [r.dimensions for r in rows],
        [r.value for r in rows],
        first,
        last,
        list(names),
    )
    return changed


async def population_on(conn: asyncpg.Connection, day: date) -> dict[str, int] | None:
    """The stored end-of-day population of each stage, or None when the day was not rolled up."""
    rows = await conn.fetch(
        "SELECT lifecycle_stage, metric_value FROM metrics_daily"
        " WHERE metric_date = $1 AND metric_name = 'population_eod' AND dimensions = '{}'",
        day,
    )
    return {r["lifecycle_stage"]: int(r["metric_value"]) for r in rows} if rows else None


async def last_population_day(conn: Executor, until: date | None = None) -> date | None:
    day: date | None = await conn.fetchval(
        "SELECT max(metric_date) FROM metrics_daily WHERE metric_name = 'population_eod'"
        " AND ($1::date IS NULL OR metric_date <= $1)",
        until,
    )
    return day


async def first_event_day(conn: asyncpg.Connection) -> date | None:
    day: date | None = await conn.fetchval(
        "SELECT least((SELECT min(created_at) FROM lifecycle_events) AT TIME ZONE 'UTC',"
        " (SELECT min(event_day) FROM erased_events))::date"
    )
    return day


async def logged_since(conn: Executor) -> date | None:
    """The first day from which the log holds every event: the end of the newest
    archived partition (None when nothing was archived)."""
    day: date | None = await conn.fetchval(
        "SELECT (max(range_end) AT TIME ZONE 'UTC')::date FROM archived_partitions"
    )
    return day


_NET_FLOWS = f"""
SELECT f.stage, sum(f.delta)::bigint AS delta FROM (
  SELECT {_FROM_STAGE} AS from_stage, {_TO_STAGE} AS to_stage FROM lifecycle_events
  WHERE event_type IN {_MOVE_TYPES} AND created_at >= $1 AND created_at < $2
  UNION ALL
  SELECT from_stage, to_stage FROM erased_events WHERE {_ERASED_DAYS}
) m CROSS JOIN LATERAL (VALUES (m.to_stage, 1), (m.from_stage, -1)) AS f(stage, delta)
WHERE f.stage IS NOT NULL GROUP BY f.stage
"""


async def net_flows(conn: Executor, start: datetime, end: datetime) -> dict[str, int]:
    """Users in minus users out of each stage over [start, end) (day starts), from
    the event log and the erased events."""
    return {r["stage"]: r["delta"] for r in await conn.fetch(_NET_FLOWS, start, end)}


async def stored_flows(
    conn: asyncpg.Connection, first: date, last: date
) -> tuple[dict[tuple[date, str], int], dict[tuple[date, str], dict[str, int]]]:
    """net_flow and conversions rows of [first, last], as the population pass reads them."""
    net: dict[tuple[date, str], int] = {}
    conversions: dict[tuple[date, str], dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(
        "SELECT metric_date, lifecycle_stage, metric_name, dimensions->>'to_stage' AS to_stage,"
        " metric_value FROM metrics_daily"
        " WHERE metric_date BETWEEN $1 AND $2 AND metric_name IN ('net_flow', 'conversions')"
        " AND lifecycle_stage = ANY($3::text[])",
        first,
        last,
        list(STAGES),
    ):
        key = (r["metric_date"], r["lifecycle_stage"])
        if r["metric_name"] == "net_flow":
            net[key] = int(r["metric_value"])
        elif r["to_stage"] is not None:
            conversions[key][r["to_stage"]] = int(r["metric_value"])
    return net, conversions


@dataclass(frozen=True)
class MetricQuery:
    first: date
    last: date
    names: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    dimensions: str = "{}"


async def metric_points(conn: Executor, query: MetricQuery, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT metric_name, lifecycle_stage, dimensions, metric_date, metric_value"
        " FROM metrics_daily WHERE metric_date BETWEEN $1 AND $2"
        " AND ($3::text[] IS NULL OR metric_name = ANY($3))"
        " AND ($4::text[] IS NULL OR lifecycle_stage = ANY($4))"
        " AND dimensions @> $5::text::jsonb"
        " ORDER BY metric_name, lifecycle_stage, dimensions::text, metric_date LIMIT $6",
        query.first,
        query.last,
        list(query.names) or None,
        list(query.stages) or None,
        query.dimensions,
        limit,
    )


_FUNNEL = f"""
WITH entered AS (
  SELECT user_id, lifecycle_stage AS stage, min(created_at) AS first_at, max(created_at) AS last_at
  FROM lifecycle_events
  WHERE event_type IN ('{CREATED}', '{STAGE_CHANGED}') AND user_id IS NOT NULL
    AND created_at >= $1 AND created_at < $2
  GROUP BY user_id, lifecycle_stage
), steps AS (
  SELECT * FROM unnest($3::text[], $4::text[]) AS s(stage, previous)
)
SELECT s.stage,
       (SELECT count(*) FROM entered e WHERE e.stage = s.stage) AS entered,
       (SELECT count(*) FROM entered p WHERE p.stage = s.previous) AS previous_entered,
       (SELECT count(*) FROM entered p JOIN entered e
          ON e.user_id = p.user_id AND e.stage = s.stage AND e.last_at > p.first_at
        WHERE p.stage = s.previous) AS converted
FROM steps s
"""


async def funnel(conn: Executor, start: datetime, end: datetime) -> list[tuple[str, int, int, int]]:
    """Per stage in AARRR order: (stage, entrants, entrants of the previous stage,
    those of them who entered this stage later in the range)."""
    rows = await conn.fetch(_FUNNEL, start, end, list(STAGES), [None, *STAGES[:-1]])
    return [(r["stage"], r["entered"], r["previous_entered"], r["converted"]) for r in rows]
