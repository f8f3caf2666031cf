"""The SQL of the event analytics (docs/metrics.md, "Event funnels" and
"Retention"): one query each, over the event log of the range only. The time
bounds are plain conditions on `created_at`, so PostgreSQL reads only the
partitions of the range.

A funnel query finds, for each event that may start a person's attempt (a
first step in the date range), the times of the steps it reaches within the
window (its `chain`), keeps each person's best attempt (the most steps, then
the earliest) and counts people and median gaps per step, in total and per
breakdown value. Only the chains differ between the order modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.database import Executor
from services.metrics.analytics import (
    CohortCount,
    FunnelCount,
    FunnelQuery,
    Order,
    Period,
    RetentionQuery,
)
from services.metrics.store.event_match import Parameters, match_sql, type_filter

# $1 start of the first step's range, $2 its end, $3 the end of the events read
# (the range's end plus the window), $4 the window.
_FUNNEL_BOUNDS = 4
# Each attempt's chain cut to the window: the steps' times, increasing.
_WINDOWED = "ARRAY(SELECT x FROM unnest({chain}) x WHERE x <= t + $4 ORDER BY x)"


def _flags(size: int) -> str:
    return ", ".join(f"m{j}" for j in range(1, size + 1))


def _ordered(size: int) -> str:
    """Each step's chain: its own time, then the chain of the earliest event of
    the next step strictly later, the min of the later chains (arrays compare
    by their first element, the time). The earliest next step reaches at least
    as far as any later one. A level per step, from the last one back; one sort
    serves them all, and frames that start at the partition's head aggregate as
    they go."""
    later = (
        "PARTITION BY user_id ORDER BY t DESC"
        " RANGE BETWEEN UNBOUNDED PRECEDING AND '1 microsecond' PRECEDING"
    )
    levels = [
        f"c{size} AS (SELECT *, CASE WHEN m{size} THEN ARRAY[t] END AS chain{size} FROM events)"
    ]
    for j in range(size - 1, 0, -1):
        levels.append(
            f"c{j} AS (SELECT *, CASE WHEN m{j} THEN ARRAY[t] || min(chain{j + 1}) OVER ({later})"
            f" END AS chain{j} FROM c{j + 1})"
        )
    chain = _WINDOWED.format(chain="chain1")
    return (
        ", ".join(levels)
        + f", attempts AS (SELECT user_id, t, value, {chain} AS chain FROM c1 WHERE m1 AND t < $2)"
    )


def _any(size: int) -> str:
    """From each event of a step: the first event of every step at or after it,
    those within the window."""
    firsts = ", ".join(
        f"min(CASE WHEN m{j} THEN t END) OVER soon AS f{j}" for j in range(1, size + 1)
    )
    chain = _WINDOWED.format(chain=f"ARRAY[{', '.join(f'f{j}' for j in range(1, size + 1))}]")
    anyone = " OR ".join(f"m{j}" for j in range(1, size + 1))
    return (
        f"firsts AS (SELECT *, {firsts} FROM events"
        " WINDOW soon AS (PARTITION BY user_id ORDER BY t DESC)),"
        f" attempts AS (SELECT user_id, t, value, {chain} AS chain FROM firsts"
        f" WHERE t < $2 AND ({anyone}))"
    )


def _strict(size: int) -> str:
    """The person's next events, each alone at its instant (two events at one
    instant have no order between them), matching the next steps, within the
    window."""
    window = "PARTITION BY user_id ORDER BY t"
    alone = (
        f"(lag(t) OVER ({window}) IS DISTINCT FROM t"
        f" AND lead(t) OVER ({window}) IS DISTINCT FROM t)"
    )
    leads = ", ".join(
        f"lead(t, {i}) OVER ({window}) AS t{i},"
        f" coalesce(lead(m{i + 1} AND alone, {i}) OVER ({window}), false) AS ok{i}"
        for i in range(1, size)
    )
    depth = " ".join(f"WHEN NOT (ok{i} AND t{i} <= t + $4) THEN {i}" for i in range(1, size))
    times = ", ".join(["t", *(f"t{i}" for i in range(1, size))])
    return (
        f"flagged AS (SELECT *, {alone} AS alone FROM events),"
        f" leads AS (SELECT *, {leads} FROM flagged),"
        f" attempts AS (SELECT user_id, t, value,"
        f" (ARRAY[{times}])[1:CASE {depth} ELSE {size} END] AS chain"
        " FROM leads WHERE m1 AND alone AND t < $2)"
    )


_CHAINS: dict[Order, Callable[[int], str]] = {
    Order.ORDERED: _ordered,
    Order.ANY: _any,
    Order.STRICT: _strict,
}


def funnel_query(query: FunnelQuery) -> tuple[str, list[Any]]:
    params = Parameters(_FUNNEL_BOUNDS + 1)
    size = len(query.steps)
    flags = ", ".join(f"{match_sql(step, params)} AS m{j}" for j, step in enumerate(query.steps, 1))
    if query.breakdown is None:
        value = "NULL::text"
    elif query.breakdown.data_keys is None:
        value = "coalesce(lifecycle_stage, '')"
    else:
        value = (
            f"coalesce(event_data #>> {params.add(list(query.breakdown.data_keys), 'text[]')}, '')"
        )
    # A strict funnel reads every event of the range: any event between steps breaks it.
    types = "" if query.order is Order.STRICT else f" AND {type_filter(list(query.steps), params)}"
    # With a breakdown, each step in total and per value.
    groups, total = ("GROUPING SETS ((j), (value, j))", "grouping(value) = 1")
    if query.breakdown is None:
        groups, total = "value, j", "true"
    sql = f"""
WITH events AS (
  SELECT user_id, created_at AS t, {value} AS value, {flags}
  FROM lifecycle_events
  WHERE created_at >= $1 AND created_at < $3 AND user_id IS NOT NULL{types}
), {_CHAINS[query.order](size)}, best AS (
  SELECT DISTINCT ON (user_id) user_id, value, chain FROM attempts
  ORDER BY user_id, cardinality(chain) DESC, t
), reached AS (
  SELECT value, j,
         CASE WHEN j > 1 THEN (extract(epoch FROM at - chain[j - 1]) * 1000000)::bigint END AS gap
  FROM best, unnest(chain) WITH ORDINALITY AS step(at, j)
)
SELECT {total} AS total, value, j, count(*) AS people,
       floor(percentile_cont(0.5) WITHIN GROUP (ORDER BY gap))::bigint AS median
FROM reached GROUP BY {groups}
"""
    bounds = [query.start, query.end, query.end + query.window, query.window]
    return sql, [*bounds, *params.values]


async def event_funnel(conn: Executor, query: FunnelQuery) -> list[FunnelCount]:
    sql, args = funnel_query(query)
    return [
        FunnelCount(
            None if r["total"] or query.breakdown is None else r["value"],
            r["j"],
            r["people"],
            r["median"],
        )
        for r in await conn.fetch(sql, *args)
    ]


# The index of a return's period after its cohort's, from their first days.
_PERIOD_INDEX = {
    Period.DAY: "(r_start - cohort_start)",
    Period.WEEK: "((r_start - cohort_start) / 7)",
    Period.MONTH: (
        "((extract(year FROM r_start) - extract(year FROM cohort_start)) * 12"
        " + extract(month FROM r_start) - extract(month FROM cohort_start))::int"
    ),
}
_UNITS = {Period.DAY: "day", Period.WEEK: "week", Period.MONTH: "month"}


def retention_query(query: RetentionQuery) -> tuple[str, list[Any]]:
    """$1 and $2 bound the cohort events, $3 the returns; $4 the periods, $5 the unit.

    One pass over the range's events of either kind, each person's first cohort
    event found by a window over their own rows: no join of the cohort with
    the events, which a plan without statistics yet (a partition filling up)
    would run as a nested loop over every pair."""
    params = Parameters(6)
    cohort, returning = match_sql(query.cohort, params), match_sql(query.returning, params)
    sql = f"""
WITH marked AS (
  SELECT user_id, created_at, {returning} AS returns,
         min(created_at) FILTER (WHERE {cohort} AND created_at < $2)
           OVER (PARTITION BY user_id) AS at
  FROM lifecycle_events
  WHERE created_at >= $1 AND created_at < $3 AND user_id IS NOT NULL
    AND ({cohort} OR {returning})
), members AS (
  SELECT DISTINCT user_id, at, date_trunc($5, at AT TIME ZONE 'UTC')::date AS cohort_start
  FROM marked WHERE at IS NOT NULL
), returns AS (
  SELECT user_id, date_trunc($5, at AT TIME ZONE 'UTC')::date AS cohort_start,
         date_trunc($5, created_at AT TIME ZONE 'UTC')::date AS r_start
  FROM marked WHERE returns AND created_at > at
), counts AS MATERIALIZED (
  SELECT cohort_start, {_PERIOD_INDEX[query.period]} AS n, count(DISTINCT user_id) AS returned
  FROM returns GROUP BY 1, 2
)
SELECT cohort_start, count(*) AS size,
       ARRAY(SELECT coalesce(c.returned, 0) FROM generate_series(0, $4) g
             LEFT JOIN counts c ON c.cohort_start = m.cohort_start AND c.n = g ORDER BY g)
         AS returned
FROM members m GROUP BY cohort_start ORDER BY cohort_start
"""
    bounds = [query.start, query.end, query.returns_end, query.periods, _UNITS[query.period]]
    return sql, [*bounds, *params.values]


async def retention(conn: Executor, query: RetentionQuery) -> list[CohortCount]:
    sql, args = retention_query(query)
    return [
        CohortCount(r["cohort_start"], r["size"], list(r["returned"]))
        for r in await conn.fetch(sql, *args)
    ]
