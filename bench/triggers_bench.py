"""Triggers service throughput, beside limits measured in the same run.

    python -m bench.triggers_bench [--calls 5000] [--concurrency 64] [--events 50000]

The services run as processes of their own, on users loaded with COPY. An
event is acknowledged once it is stored and evaluated, with its trigger
executions, its workflow starts and its outbox messages (PublishMessage,
RecordEvents) committed; the starts and messages are sent right after, by the
starter and the outbox relay. So the figures are taken twice:

- ingest: once the triggers are defined, the workflows and metrics services
  stop (their calls wait in the outbox and in pending_starts, as during an
  outage): what the triggers service itself sustains;
- whole path: all four services up on the same machine, each event starting a
  workflow execution: acknowledgements per second, and executions started per
  second until the last one exists, beside StartExecution of the same kind of
  workflow called directly on the same services afterwards (the limit;
  target >= 60%).

Figures:
- TrackEvent, unary, each event matching one trigger whose condition reads the
  user and holds: events/s and p99, beside an empty grpc.aio call (the limit;
  target >= 30%);
- TrackEvents in batches of 1000 (one trigger of the type, true for a fifth
  of the users): events/s stored and evaluated, beside a raw asyncpg COPY of
  the same event rows into the same table (the limit; target >= 20,000/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc

from bench.harness import (
    Measurement,
    closed_loop,
    scratch_database,
    server_url,
    start_process,
    wait_serving,
)
from bench.users_bench import measure_empty
from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.config import service_role, with_user
from runtime.structs import dict_to_struct
from tests.support import free_port
from tests.workflows.bpmn_docs import end, linear, start

PLANS = ["free", "free", "pro", "team", "enterprise"]
COUNTRIES = ["DE", "FR", "US", "BR", "IN", "JP"]
BATCH = 1000
SERVICES = ("users", "workflows", "metrics", "triggers")
# Holds for every user: each event starts a workflow.
EVERYONE = {"v": 1, "attr": "plan", "op": "in", "value": PLANS}
ENTERPRISE = {"v": 1, "attr": "plan", "op": "eq", "value": "enterprise"}


@dataclass
class Suite:
    database_url: str
    processes: dict[str, subprocess.Popen[bytes]]
    triggers: triggers_pb2_grpc.TriggerServiceAsyncStub
    workflows: workflows_pb2_grpc.WorkflowServiceAsyncStub

    def stop(self, *names: str) -> None:
        for name in names:
            self.processes[name].terminate()
            self.processes[name].wait()


@contextlib.asynccontextmanager
async def services(database_url: str) -> AsyncIterator[Suite]:
    """The four services as processes, and stubs to two of them."""
    ports = {name: free_port() for name in SERVICES}
    env = {
        "LIFECYCLE_DATABASE_URL": database_url,
        "LIFECYCLE_LOG_LEVEL": "ERROR",
        "LIFECYCLE_DB_POOL_SIZE": "20",
        "LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS": "0",
    }
    for name, port in ports.items():
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(port)
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    processes = {name: start_process(["-m", "suite.cli", "serve", name], env) for name in SERVICES}
    try:
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}")
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['triggers']}") as triggers,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['workflows']}") as workflows,
        ):
            yield Suite(
                database_url,
                processes,
                triggers_pb2_grpc.TriggerServiceStub(triggers),
                workflows_pb2_grpc.WorkflowServiceStub(workflows),
            )
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            process.wait()


async def as_role(database_url: str, service: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(with_user(database_url, service_role(database_url, service)))
    await conn.execute(f"SET search_path = {service}")
    return conn


async def load_users(database_url: str, count: int) -> list[str]:
    """COPYs `count` users with their first stage transition, as the users role."""
    rng = random.Random(6)
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    users = [
        (
            user_id,
            f"bench-{n}@triggers.test",
            "Acquisition",
            json.dumps({"plan": rng.choice(PLANS), "country": rng.choice(COUNTRIES)}),
        )
        for n, user_id in enumerate(ids)
    ]
    conn = await as_role(database_url, "users")
    try:
        await conn.copy_records_to_table(
            "users", records=users, columns=["id", "email", "current_lifecycle_stage", "attributes"]
        )
        await conn.copy_records_to_table(
            "user_lifecycle_history",
            records=[(user_id, "Acquisition", now) for user_id in ids],
            columns=["user_id", "to_stage", "transitioned_at"],
        )
    finally:
        await conn.close()
    return [str(user_id) for user_id in ids]


async def instant_workflow(suite: Suite) -> str:
    """An active workflow that ends at once."""
    created = await suite.workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(name="bench", bpmn_xml=linear(start(), end()))
        )
    )
    workflow_id = created.workflow.id
    await suite.workflows.ActivateWorkflow(
        workflows_pb2.ActivateWorkflowRequest(workflow_id=workflow_id)
    )
    return workflow_id


async def add_trigger(suite: Suite, event_type: str, condition: dict[str, object]) -> str:
    """A trigger starting a workflow that ends at once."""
    workflow_id = await instant_workflow(suite)
    reply = await suite.triggers.CreateTrigger(
        pb.CreateTriggerRequest(
            trigger=pb.Trigger(
                name=event_type,
                event_type=event_type,
                conditions=dict_to_struct(condition),
                workflow_id=workflow_id,
            )
        )
    )
    return reply.trigger.id


def bench_event(user_id: str, event_type: str, n: int) -> pb.Event:
    return pb.Event(
        user_id=user_id,
        event_type=event_type,
        data=dict_to_struct({"n": n, "source": "bench", "amount": n % 500}),
        message_id=uuid.uuid4().hex,
    )


async def started_count(database_url: str, trigger_id: str) -> int:
    conn = await as_role(database_url, "triggers")
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM trigger_executions"
            " WHERE trigger_id = $1 AND workflow_execution_id IS NOT NULL",
            uuid.UUID(trigger_id),
        )
        return count
    finally:
        await conn.close()


async def until_started(database_url: str, trigger_id: str, count: int) -> None:
    for _ in range(3000):
        if await started_count(database_url, trigger_id) >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the workflow executions were not all started in 10 minutes")


async def track_unary(
    suite: Suite, users: list[str], name: str, calls: int, concurrency: int
) -> Measurement:
    async def call(n: int) -> object:
        given = bench_event(random.choice(users), "bench.signup", n)
        return await suite.triggers.TrackEvent(pb.TrackEventRequest(event=given))

    await closed_loop("warm-up", call, 500, concurrency)
    return await closed_loop(name, call, calls, concurrency)


async def track_bulk(suite: Suite, users: list[str], events: int) -> float:
    """Seconds to store and evaluate `events` events sent as TrackEvents of 1000,
    four calls at a time."""
    batches = [
        pb.TrackEventsRequest(
            events=[
                bench_event(random.choice(users), "bench.purchase", n)
                for n in range(first, min(events, first + BATCH))
            ]
        )
        for first in range(0, events, BATCH)
    ]
    pending = iter(batches)
    accepted = 0

    async def sender() -> None:
        nonlocal accepted
        for batch in pending:
            reply = await suite.triggers.TrackEvents(batch)
            assert not reply.errors, reply.errors[0]
            accepted += reply.accepted_count

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(4)))
    seconds = time.perf_counter() - started
    assert accepted == events, accepted
    return seconds


async def copy_events(database_url: str, users: list[str], events: int) -> float:
    """Seconds for a raw COPY of as many event rows into triggers.events."""
    now = datetime.now(UTC)
    rows = [
        (
            uuid.uuid4().hex,
            uuid.UUID(random.choice(users)),
            "bench.purchase",
            json.dumps({"n": n, "source": "bench", "amount": n % 500}),
            now,
        )
        for n in range(events)
    ]
    conn = await as_role(database_url, "triggers")
    try:
        started = time.perf_counter()
        for first in range(0, events, BATCH):
            await conn.copy_records_to_table(
                "events",
                records=rows[first : first + BATCH],
                columns=["message_id", "user_id", "event_type", "data", "event_time"],
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def start_directly(
    suite: Suite, users: list[str], calls: int, concurrency: int
) -> Measurement:
    """StartExecution of the same kind of workflow, called directly: the rate the
    whole path's starts are measured against."""
    workflow_id = await instant_workflow(suite)

    async def call(n: int) -> object:
        return await suite.workflows.StartExecution(
            workflows_pb2.StartExecutionRequest(
                workflow_id=workflow_id,
                user_id=random.choice(users),
                request_id=str(uuid.uuid4()),
            )
        )

    await closed_loop("warm-up", call, 500, concurrency)
    return await closed_loop("StartExecution alone", call, calls, concurrency)


@dataclass
class Figures:
    empty: Measurement
    ingest: Measurement | None = None
    bulk_seconds: float = 0.0
    copy_seconds: float = 0.0
    whole: Measurement | None = None
    executions_seconds: float = 0.0
    starts: Measurement | None = None


async def measure_ingest(
    database_url: str, figures: Figures, calls: int, concurrency: int, events: int
) -> None:
    users = await load_users(database_url, 20_000)
    async with services(database_url) as suite:
        await add_trigger(suite, "bench.signup", EVERYONE)
        await add_trigger(suite, "bench.purchase", ENTERPRISE)
        suite.stop("workflows", "metrics")
        figures.ingest = await track_unary(suite, users, "TrackEvent (ingest)", calls, concurrency)
        figures.bulk_seconds = await track_bulk(suite, users, events)
    figures.copy_seconds = await copy_events(database_url, users, events)


async def measure_whole_path(
    database_url: str, figures: Figures, calls: int, concurrency: int
) -> None:
    users = await load_users(database_url, 20_000)
    async with services(database_url) as suite:
        trigger_id = await add_trigger(suite, "bench.signup", EVERYONE)
        started = time.perf_counter()
        figures.whole = await track_unary(
            suite, users, "TrackEvent (whole path)", calls, concurrency
        )
        await until_started(database_url, trigger_id, calls + 500)
        figures.executions_seconds = time.perf_counter() - started
        figures.starts = await start_directly(suite, users, calls, concurrency)


async def main(calls: int, concurrency: int, events: int) -> None:
    with server_url() as url:
        figures = Figures(await measure_empty("empty unary call (limit)", calls, concurrency, None))
        async with scratch_database(url) as database_url:
            await measure_ingest(database_url, figures, calls, concurrency, events)
        async with scratch_database(url) as database_url:
            await measure_whole_path(database_url, figures, calls, concurrency)
    assert figures.ingest is not None and figures.whole is not None and figures.starts is not None
    print(f"triggers service, {calls} calls at concurrency {concurrency}, 20000 users:")
    print(figures.empty.line())
    print(figures.ingest.line(figures.empty), "  (target >= 30%)")
    print(figures.whole.line(figures.empty))
    executions = (calls + 500) / figures.executions_seconds
    print(figures.starts.line())
    print(
        f"{'  executions started':<28} {executions:10.0f}/s   "
        f"{executions / figures.starts.rate:6.1%} of StartExecution alone  (target >= 60%)"
    )
    copy_rate = events / figures.copy_seconds
    rate = events / figures.bulk_seconds
    print(f"{'raw COPY of the events':<28} {copy_rate:10.0f} events/s  ({events} events, limit)")
    print(
        f"{'TrackEvents, 1000 a call':<28} {rate:10.0f} events/s  {rate / copy_rate:6.1%} of raw"
        " COPY  (target >= 20,000 events/s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.events))
