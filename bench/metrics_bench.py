"""Metrics service ingest and rollup, beside limits measured in the same run.

    python -m bench.metrics_bench [--events 200000] [--rollup-events 5000000]

- RecordEvents rows per second (batches of 1000 events, as the outbox relay
  sends them, from 4 concurrent callers, through a real server process),
  beside a raw asyncpg COPY of the same rows into the same table.
  Target: >= 30% of raw COPY.
- RunRollup over `--rollup-events` events spread over 60 days, beside the
  equivalent hand-written GROUP BY queries (the same counts, dwell
  percentiles and distinct active users, read but not written) on the same data.
  Target: within 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from bench.harness import scratch_database, server_url, start_process, wait_serving
from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from runtime.clients import GRPC_SERVICES
from runtime.config import service_role, with_user
from runtime.stages import STAGES, stage_value
from runtime.structs import set_timestamp
from tests.support import free_port

BATCH = 1000
CALLERS = 4
DAYS = 60
RECORD_EVENTS = f"/{GRPC_SERVICES['metrics']}/RecordEvents"


@contextlib.asynccontextmanager
async def metrics_service(database_url: str) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    env = {
        "LIFECYCLE_DATABASE_URL": database_url,
        "LIFECYCLE_METRICS_PORT": str(port),
        "LIFECYCLE_LOG_LEVEL": "ERROR",
        "LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS": "0",
        "LIFECYCLE_CALL_TIMEOUT_SECONDS": "3600",
    }
    process = start_process(["-m", "suite.cli", "serve", "metrics"], env)
    try:
        await wait_serving(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        process.terminate()
        process.wait()


def sample_event(n: int, start: datetime) -> tuple[str, str, str | None, dict[str, Any]]:
    """(type, user, stage, data) of the n-th event of a realistic mix."""
    user = str(uuid.UUID(int=n % 50_000 + 1))
    stage = STAGES[n % 5]
    kind = n % 10
    if kind == 0:
        return "user.stage_changed", user, stage, {"from_stage": STAGES[(n + 1) % 5]}
    if kind in (1, 2):
        verb = "started" if kind == 1 else "completed"
        return f"execution.{verb}", user, stage, {"workflow_id": f"wf-{n % 20}"}
    if kind == 3:
        return "trigger.fired", user, None, {"trigger_id": f"tr-{n % 30}"}
    return f"tracked.t{n % 7}", user, stage, {"plan": "pro", "value": n % 100}


def event_time(n: int, count: int, start: datetime) -> datetime:
    return start + timedelta(seconds=DAYS * 86400 * n / count)


def requests(count: int, start: datetime) -> list[bytes]:
    batches = []
    for first in range(0, count, BATCH):
        request = metrics_pb2.RecordEventsRequest()
        for n in range(first, min(count, first + BATCH)):
            kind, user, stage, data = sample_event(n, start)
            message = request.events.add(
                event_id=str(uuid.uuid4()),
                event_type=kind,
                user_id=user,
                lifecycle_stage=stage_value(stage),
                producer="bench",
            )
            message.data.update(data)
            set_timestamp(message.event_time, event_time(n, count, start))
        batches.append(request.SerializeToString())
    return batches


async def measure_record_events(database_url: str, payloads: list[bytes]) -> float:
    async with metrics_service(database_url) as channel:
        call = channel.unary_unary(
            RECORD_EVENTS, request_serializer=None, response_deserializer=None
        )
        await call(payloads[0])
        pending = iter(payloads[1:])

        async def caller() -> None:
            for payload in pending:
                await call(payload)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return time.perf_counter() - started


async def metrics_connection(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(with_user(database_url, service_role(database_url, "metrics")))
    await conn.execute("SET search_path = metrics")
    return conn


async def measure_copy(database_url: str, payloads: list[bytes]) -> float:
    """Seconds for a raw COPY of the rows RecordEvents stored (emptied first)."""
    conn = await metrics_connection(database_url)
    try:
        columns = [
            "event_id",
            "event_type",
            "user_id",
            "lifecycle_stage",
            "event_data",
            "created_at",
            "producer",
        ]
        records = [
            (
                uuid.uuid4(),
                e.event_type,
                uuid.UUID(e.user_id),
                STAGES[e.lifecycle_stage - 1] if e.lifecycle_stage else None,
                json.dumps(dict(e.data)),
                e.event_time.ToDatetime(tzinfo=UTC),
                e.producer,
            )
            for payload in payloads
            for e in metrics_pb2.RecordEventsRequest.FromString(payload).events
        ]
        await conn.execute("TRUNCATE lifecycle_events")
        started = time.perf_counter()
        await conn.copy_records_to_table("lifecycle_events", records=records, columns=columns)
        return time.perf_counter() - started
    finally:
        await conn.close()


_GENERATE = """
INSERT INTO lifecycle_events (event_id, event_type, user_id, lifecycle_stage, event_data,
                              created_at, producer)
SELECT gen_random_uuid(),
       CASE WHEN n % 10 = 0 THEN 'user.stage_changed'
            WHEN n % 10 = 1 THEN 'execution.started' WHEN n % 10 = 2 THEN 'execution.completed'
            WHEN n % 10 = 3 THEN 'trigger.fired' ELSE 'tracked.t' || n % 7 END,
       md5((n % $2)::text)::uuid,
       CASE WHEN n % 10 = 3 THEN NULL ELSE (ARRAY['Acquisition', 'Activation', 'Retention',
            'Revenue', 'Referral'])[n % 5 + 1] END,
       CASE WHEN n % 10 = 0 THEN jsonb_build_object('from_stage', (ARRAY['Acquisition',
              'Activation', 'Retention', 'Revenue', 'Referral'])[(n + 1) % 5 + 1])
            WHEN n % 10 IN (1, 2) THEN jsonb_build_object('workflow_id', 'wf-' || n % 20)
            WHEN n % 10 = 3 THEN jsonb_build_object('trigger_id', 'tr-' || n % 30)
            ELSE jsonb_build_object('plan', 'pro', 'value', n % 100) END,
       $3::timestamptz + make_interval(secs => $4::float8 * 86400 * n / $1),
       'bench'
FROM generate_series(0, $1 - 1) AS n
"""

_HAND_WRITTEN = [
    # Counts by day, type and stage, and by day, type and the breakdown key.
    """SELECT (created_at AT TIME ZONE 'UTC')::date, event_type, lifecycle_stage, count(*)
       FROM lifecycle_events WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2, 3""",
    """SELECT (created_at AT TIME ZONE 'UTC')::date, event_type,
              coalesce(event_data->>'workflow_id', event_data->>'trigger_id',
                       event_data->>'segment_id'), count(*)
       FROM lifecycle_events WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2, 3""",
    # Moves between stages with the time spent in the stage left.
    """SELECT day, from_stage, to_stage, count(*),
              percentile_cont(0.5) WITHIN GROUP (ORDER BY dwell),
              percentile_cont(0.9) WITHIN GROUP (ORDER BY dwell)
       FROM (SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
                    event_data->>'from_stage' AS from_stage, lifecycle_stage AS to_stage,
                    extract(epoch FROM created_at - lag(created_at)
                      OVER (PARTITION BY user_id ORDER BY created_at, id)) AS dwell
             FROM lifecycle_events
             WHERE event_type IN ('user.created', 'user.stage_changed', 'user.erased')
               AND created_at >= $1 AND created_at < $2) m
       GROUP BY 1, 2, 3""",
    # Distinct active users by day and stage.
    """SELECT (created_at AT TIME ZONE 'UTC')::date, lifecycle_stage, count(DISTINCT user_id)
       FROM lifecycle_events WHERE event_type LIKE 'tracked.%' AND created_at >= $1
         AND created_at < $2 GROUP BY 1, 2""",
]


async def measure_rollup(database_url: str, events: int, start: date) -> tuple[float, float]:
    """Seconds of RunRollup over the data, and of the hand-written queries on it."""
    conn = await metrics_connection(database_url)
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    end = begin + timedelta(days=DAYS)
    try:
        await conn.execute("TRUNCATE lifecycle_events")
        await conn.execute(_GENERATE, events, max(1, events // 20), begin, DAYS)
        await conn.execute("VACUUM ANALYZE lifecycle_events")
        started = time.perf_counter()
        for query in _HAND_WRITTEN:
            await conn.fetch(query, begin, end)
        hand_written = time.perf_counter() - started
    finally:
        await conn.close()
    async with metrics_service(database_url) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        last = start + timedelta(days=DAYS - 1)
        started = time.perf_counter()
        reply = await stub.RunRollup(
            metrics_pb2.RunRollupRequest(start_date=start.isoformat(), end_date=last.isoformat())
        )
        rollup = time.perf_counter() - started
    assert reply.rows_written > 0, reply
    return rollup, hand_written


async def main(events: int, rollup_events: int) -> None:
    today = datetime.now(UTC).date()
    # Inside the partitions migrations create: this month and the next three.
    start = date(today.year, today.month, 1) + timedelta(days=1)
    with server_url() as url:
        async with scratch_database(url) as database_url:
            payloads = requests(events, datetime(start.year, start.month, start.day, tzinfo=UTC))
            ingest = await measure_record_events(database_url, payloads)
            copy = await measure_copy(database_url, payloads)
            rollup, hand_written = await measure_rollup(database_url, rollup_events, start)
    stored = events - BATCH
    copy_rate, ingest_rate = events / copy, stored / ingest
    print(f"metrics service, {events} events in batches of {BATCH} from {CALLERS} callers:")
    print(f"{'raw COPY (limit)':<28} {copy_rate:10.0f} rows/s")
    print(
        f"{'RecordEvents':<28} {ingest_rate:10.0f} rows/s  {ingest_rate / copy_rate:6.1%}"
        " of raw COPY  (target >= 30%)"
    )
    print(f"rollup of {rollup_events} events over {DAYS} days:")
    print(f"{'hand-written GROUP BY (limit)':<30} {hand_written:8.2f} s")
    print(
        f"{'RunRollup':<30} {rollup:8.2f} s  {rollup / hand_written:5.2f}x the hand-written"
        " queries  (target <= 2x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rollup-events", type=int, default=5_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rollup_events))
