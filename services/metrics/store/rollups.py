"""The daily metrics' SQL: the rollup's passes over the event log (and the
facts kept of erased users' events), metrics_daily written and read, the
funnel read from the log."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime

import asyncpg

from runtime.database import Executor
from runtime.stages import STAGES
from services.metrics.domain import (
    CREATED,
    STAGE_CHANGED,
    EventCount,
    MetricPoint,
    MetricQuery,
    MetricRow,
    Moves,
)
from services.metrics.store.common import (
    DAY,
    ERASED_DAYS,
    FROM_STAGE,
    MOVE_TYPES,
    SUBJECT,
    TO_STAGE,
)

# The rollup's three passes over the events of [$1, $2), the log's and the erased ones.
_COUNT_EVENTS = f"""
SELECT day, event_type, lifecycle_stage, subject,
       GROUPING(lifecycle_stage, subject) AS grouping, count(*) AS count
FROM (
  SELECT {DAY} AS day, event_type, lifecycle_stage, {SUBJECT} AS subject
  FROM lifecycle_events WHERE created_at >= $1 AND created_at < $2
  UNION ALL
  SELECT event_day, event_type, lifecycle_stage, subject FROM erased_events WHERE {ERASED_DAYS}
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
  SELECT id, user_id, created_at, {FROM_STAGE} AS from_stage, {TO_STAGE} AS to_stage
  FROM lifecycle_events
  WHERE event_type IN {MOVE_TYPES} AND created_at >= $1 AND created_at < $2
), timed AS (
  SELECT {DAY} AS day, from_stage, to_stage,
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
  WHERE event_type IN {MOVE_TYPES} AND {ERASED_DAYS}
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
    SELECT {DAY} AS day, lifecycle_stage, user_id FROM lifecycle_events
    WHERE event_type LIKE 'tracked.%' AND user_id IS NOT NULL
      AND created_at >= $1 AND created_at < $2
  ) e
  GROUP BY GROUPING SETS ((day), (day, lifecycle_stage))
  UNION ALL
  SELECT event_day, lifecycle_stage, false, count(*) FROM erased_events
  WHERE first_activity_in_stage AND {ERASED_DAYS} GROUP BY event_day, lifecycle_stage
  UNION ALL
  SELECT event_day, NULL, true, count(*) FROM erased_events
  WHERE first_activity_of_day AND {ERASED_DAYS} GROUP BY event_day
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
  SELECT {FROM_STAGE} AS from_stage, {TO_STAGE} AS to_stage FROM lifecycle_events
  WHERE event_type IN {MOVE_TYPES} AND created_at >= $1 AND created_at < $2
  UNION ALL
  SELECT from_stage, to_stage FROM erased_events WHERE {ERASED_DAYS}
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


async def metric_points(conn: Executor, query: MetricQuery, limit: int) -> list[MetricPoint]:
    rows = await conn.fetch(
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
    return [
        MetricPoint(
            r["metric_name"],
            r["lifecycle_stage"],
            r["dimensions"],
            r["metric_date"],
            r["metric_value"],
        )
        for r in rows
    ]


def _funnel_sql() -> str:
    """Each user's first and last entry into each stage in the range, then, in
    one pass over those users, per stage: its entrants, the previous stage's,
    and those of them who entered this stage later. One aggregate a level, no
    join: linear in the range's users whatever the planner knows of them."""
    per_stage = ",\n".join(
        f"min(first_at) FILTER (WHERE stage = ${n + 3}) AS first_{n},"
        f" max(last_at) FILTER (WHERE stage = ${n + 3}) AS last_{n}"
        for n in range(len(STAGES))
    )
    counts = ",\n".join(
        f"count(first_{n}) AS entered_{n}"
        + ("" if n == 0 else f", count(*) FILTER (WHERE last_{n} > first_{n - 1}) AS converted_{n}")
        for n in range(len(STAGES))
    )
    return f"""
WITH entered AS (
  SELECT user_id, lifecycle_stage AS stage, min(created_at) AS first_at, max(created_at) AS last_at
  FROM lifecycle_events
  WHERE event_type IN ('{CREATED}', '{STAGE_CHANGED}') AND user_id IS NOT NULL
    AND created_at >= $1 AND created_at < $2
  GROUP BY user_id, lifecycle_stage
), per_user AS (
  SELECT {per_stage}
  FROM entered GROUP BY user_id
)
SELECT {counts} FROM per_user
"""


_FUNNEL = _funnel_sql()


async def funnel(conn: Executor, start: datetime, end: datetime) -> list[tuple[str, int, int, int]]:
    """Per stage in AARRR order: (stage, entrants, entrants of the previous stage,
    those of them who entered this stage later in the range)."""
    row = await conn.fetchrow(_FUNNEL, start, end, *STAGES)
    assert row is not None
    return [
        (
            stage,
            row[f"entered_{n}"],
            row[f"entered_{n - 1}"] if n else 0,
            row[f"converted_{n}"] if n else 0,
        )
        for n, stage in enumerate(STAGES)
    ]
