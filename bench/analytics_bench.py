"""Event analytics of the metrics service over a large event log, each beside a
hand-written SQL query of the same answer, timed in turns with it in the same run.

    python -m bench.analytics_bench [--events 5000000] [--users 100000] [--rounds 3]

- GetEventFunnel, three ordered steps (view, cart, purchase of at least 20)
  within a day, first steps over 30 days, through a real server process.
- GetRetention, weekly cohorts of `user.created` over four weeks, logins in
  the 8 weeks after.

The log is `--events` events of `--users` people over the 60 days before
today, loaded with COPY. Each figure is the median of `--rounds` rounds.
Target: within 2x the hand-written query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench.harness import scratch_database, server_url
from bench.metrics_bench import metrics_connection, metrics_service
from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from runtime.partitions import ensure_partitions
from services.metrics.domain import EVENTS_TABLE

DAYS = 60
# Event types and their shares of the log, beside one `user.created` per person.
MIX = (
    ("tracked.view", 40),
    ("tracked.login", 20),
    ("tracked.cart", 15),
    ("tracked.purchase", 5),
    ("execution.started", 10),
    ("trigger.fired", 10),
)
COLUMNS = ["event_id", "event_type", "user_id", "lifecycle_stage", "event_data", "created_at"]
STAGES = ("Acquisition", "Activation", "Retention", "Revenue", "Referral")


def log_rows(events: int, users: int, begin: datetime) -> Iterator[tuple[Any, ...]]:
    """A reproducible log: each person created at some moment of the first 50
    days, their events after it."""
    rng = random.Random(17)
    span = DAYS * 86400
    ids = [uuid.UUID(int=n + 1) for n in range(users)]
    created = [rng.uniform(0, span * 5 / 6) for _ in range(users)]
    for person, at in zip(ids, created, strict=True):
        yield _row("user.created", person, begin + timedelta(seconds=at), {"source": "api"})
    kinds = [kind for kind, share in MIX for _ in range(share)]
    for _ in range(events - users):
        n = rng.randrange(users)
        at = created[n] + rng.random() * (span - created[n])
        kind = rng.choice(kinds)
        data = {"plan": rng.choice(("free", "pro")), "amount": rng.randrange(50)}
        yield _row(kind, ids[n], begin + timedelta(seconds=at), data)


def _row(kind: str, person: uuid.UUID, at: datetime, data: dict[str, Any]) -> tuple[Any, ...]:
    stage = STAGES[person.int % 5]
    return (uuid.uuid4(), kind, person, stage, json.dumps(data), at)


FUNNEL_FIRST_DAYS = 30
WINDOW = timedelta(days=1)
RETENTION_WEEKS = 8

# The funnel, by hand: each view's earliest cart after it within the window,
# that cart's earliest purchase (amount >= 20) after it still within the
# window of the view; each person's best view; the counts and median gaps.
_FUNNEL = """
WITH views AS (
  SELECT user_id, created_at AS t1 FROM lifecycle_events
  WHERE event_type = 'tracked.view' AND created_at >= $1 AND created_at < $2
), carts AS (
  SELECT v.user_id, v.t1, min(e.created_at) AS t2
  FROM views v JOIN lifecycle_events e ON e.user_id = v.user_id
  WHERE e.event_type = 'tracked.cart' AND e.created_at >= $1 AND e.created_at < $2 + $3
    AND e.created_at > v.t1 AND e.created_at <= v.t1 + $3
  GROUP BY 1, 2
), purchases AS (
  SELECT c.user_id, c.t1, c.t2, min(e.created_at) AS t3
  FROM carts c JOIN lifecycle_events e ON e.user_id = c.user_id
  WHERE e.event_type = 'tracked.purchase' AND (e.event_data->'amount') >= '20'::jsonb
    AND jsonb_typeof(e.event_data->'amount') = 'number'
    AND e.created_at >= $1 AND e.created_at < $2 + $3
    AND e.created_at > c.t2 AND e.created_at <= c.t1 + $3
  GROUP BY 1, 2, 3
), attempts AS (
  SELECT v.user_id, v.t1, c.t2, p.t3
  FROM views v LEFT JOIN carts c USING (user_id, t1) LEFT JOIN purchases p USING (user_id, t1)
), best AS (
  SELECT DISTINCT ON (user_id) * FROM attempts
  ORDER BY user_id, (t2 IS NOT NULL)::int + (t3 IS NOT NULL)::int DESC, t1
)
SELECT count(*), count(t2), count(t3),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t2 - t1)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t3 - t2))
FROM best
"""

_RETENTION = """
WITH cohort AS (
  SELECT user_id, min(created_at) AS at FROM lifecycle_events
  WHERE event_type = 'user.created' AND created_at >= $1 AND created_at < $2 GROUP BY 1
), weeks AS (
  SELECT user_id, at, date_trunc('week', at AT TIME ZONE 'UTC')::date AS week FROM cohort
), back AS (
  SELECT w.week, (date_trunc('week', e.created_at AT TIME ZONE 'UTC')::date - w.week) / 7 AS n,
         count(DISTINCT w.user_id) AS people
  FROM weeks w JOIN lifecycle_events e ON e.user_id = w.user_id
  WHERE e.event_type = 'tracked.login' AND e.created_at >= $1 AND e.created_at < $3
    AND e.created_at > w.at
  GROUP BY 1, 2
)
SELECT w.week, count(*), (SELECT array_agg(people ORDER BY n) FROM back b
                           WHERE b.week = w.week AND b.n <= $4)
FROM weeks w GROUP BY 1
"""


def funnel_request(first: date) -> metrics_pb2.GetEventFunnelRequest:
    request = metrics_pb2.GetEventFunnelRequest(
        steps=[
            metrics_pb2.EventMatch(event_type="tracked.view"),
            metrics_pb2.EventMatch(event_type="tracked.cart"),
            metrics_pb2.EventMatch(event_type="tracked.purchase"),
        ],
        start_date=first.isoformat(),
        end_date=(first + timedelta(days=FUNNEL_FIRST_DAYS - 1)).isoformat(),
        order=metrics_pb2.FUNNEL_ORDER_ORDERED,
    )
    request.steps[2].condition.update(
        {"v": 1, "attr": "amount", "src": "event", "op": "gte", "value": 20}
    )
    request.conversion_window.FromTimedelta(WINDOW)
    return request


def retention_request(first: date) -> metrics_pb2.GetRetentionRequest:
    return metrics_pb2.GetRetentionRequest(
        cohort_event=metrics_pb2.EventMatch(event_type="user.created"),
        return_event=metrics_pb2.EventMatch(event_type="tracked.login"),
        period=metrics_pb2.RETENTION_PERIOD_WEEK,
        periods=RETENTION_WEEKS,
        start_date=first.isoformat(),
        end_date=(first + timedelta(days=27)).isoformat(),
    )


async def load(database_url: str, events: int, users: int, begin: datetime) -> None:
    conn = await metrics_connection(database_url)
    try:
        await ensure_partitions(conn, EVENTS_TABLE, begin.date(), behind=3)
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "lifecycle_events", records=log_rows(events, users, begin), columns=COLUMNS
        )
        print(f"loaded {events:,} events with COPY in {time.perf_counter() - started:.1f} s")
        await conn.execute("VACUUM ANALYZE lifecycle_events")
    finally:
        await conn.close()


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def measure(database_url: str, begin: datetime, rounds: int) -> dict[str, list[float]]:
    first = begin.date() + timedelta(days=7)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    funnel_end = start + timedelta(days=FUNNEL_FIRST_DAYS)
    cohort_end = start + timedelta(days=28)
    returns_end = cohort_end + timedelta(weeks=RETENTION_WEEKS + 1)
    times: dict[str, list[float]] = {}
    conn = await metrics_connection(database_url)
    try:
        async with metrics_service(database_url) as channel:
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "funnel: hand-written SQL": lambda: conn.fetch(_FUNNEL, start, funnel_end, WINDOW),
                "funnel: GetEventFunnel": lambda: stub.GetEventFunnel(funnel_request(first)),
                "retention: hand-written SQL": lambda: conn.fetch(
                    _RETENTION, start, cohort_end, returns_end, RETENTION_WEEKS
                ),
                "retention: GetRetention": lambda: stub.GetRetention(retention_request(first)),
            }
            for call in calls.values():
                await call()  # Warm: the plan, the cache.
            for _ in range(rounds):
                for name, call in calls.items():
                    times.setdefault(name, []).append(await timed(call))
            print_answers(
                await stub.GetEventFunnel(funnel_request(first)),
                await conn.fetch(_FUNNEL, start, funnel_end, WINDOW),
            )
    finally:
        await conn.close()
    return times


def print_answers(reply: metrics_pb2.GetEventFunnelResponse, hand: list[asyncpg.Record]) -> None:
    """Both give the same people per step (checked), shown once."""
    people = [s.people for s in reply.steps]
    assert people == list(hand[0])[:3], (people, hand)
    print(f"funnel people per step: {people}")


async def main(events: int, users: int, rounds: int) -> None:
    today = datetime.now(UTC).date()
    first = today - timedelta(days=DAYS + 1)
    begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    with server_url() as url:
        async with scratch_database(url) as database_url:
            await load(database_url, events, users, begin)
            times = await measure(database_url, begin, rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for kind in ("funnel", "retention"):
        hand = medians[f"{kind}: hand-written SQL"]
        served = medians[next(n for n in medians if n.startswith(kind) and "hand" not in n)]
        print(f"{kind}: hand-written SQL (limit) {hand:7.2f} s")
        print(f"{kind}: the RPC {served:26.2f} s  {served / hand:5.2f}x  (target <= 2x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.users, args.rounds))
