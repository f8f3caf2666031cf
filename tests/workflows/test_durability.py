"""Durability: a service process killed in the middle of 1,000 executions
loses nothing once restarted; two replicas fire each timer once; retention
deletes old finished executions in batches."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.migrations import acting_as
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.workflows.maintenance import RETENTION, RETENTION_BATCH, maintenance
from services.workflows.service import DEFINITION, build_with
from suite.registry import schema_owners
from tests.metrics.conftest import create_partitions
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    eventually,
    free_port,
    service_config,
    service_env,
)
from tests.workflows.bpmn_docs import catch, definitions, emit, end, flow, linear, start, xor
from tests.workflows.conftest import Stub, advance, deploy
from tests.workflows.service_processes import service_process

EXECUTIONS = 1000
CRASH_WORKFLOW = definitions(
    start(),
    emit("begin"),
    catch("pause", duration="=wait"),
    xor("parity", default="to_odd"),
    emit("even"),
    emit("odd"),
    end("e_even"),
    end("e_odd"),
    flow("f1", "start", "begin"),
    flow("f2", "begin", "pause"),
    flow("f3", "pause", "parity"),
    flow("to_even", "parity", "even", "n % 2 == 0"),
    flow("to_odd", "parity", "odd"),
    flow("f4", "even", "e_even"),
    flow("f5", "odd", "e_odd"),
)


def expected_path(n: int) -> list[str]:
    branch = ["even", "e_even"] if n % 2 == 0 else ["odd", "e_odd"]
    return ["start", "begin", "pause", "parity", *branch]


async def test_killing_the_service_mid_run_loses_nothing_and_fires_no_timer_twice(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    env = service_env(
        database, {"workflows": free_port(), "users": free_port(), "metrics": free_port()}
    )
    address = env["LIFECYCLE_WORKFLOWS_ADDRESS"]
    requests = [
        pb.StartExecutionRequest(
            user_id=str(uuid.uuid4()),
            variables=dict_to_struct({"n": n, "wait": f"PT{1 + n % 2}S"}),
            request_id=str(uuid.uuid4()),
        )
        for n in range(EXECUTIONS)
    ]
    acknowledged: set[int] = set()

    async def send_all(stub: Stub, workflow_id: str, stop_on_error: bool, pace: float) -> None:
        pending = iter(range(EXECUTIONS))

        async def sender() -> None:
            for n in pending:
                request = pb.StartExecutionRequest()
                request.CopyFrom(requests[n])
                request.workflow_id = workflow_id
                try:
                    await stub.StartExecution(request, timeout=10)
                except grpc.aio.AioRpcError:
                    if stop_on_error:
                        return
                    raise
                acknowledged.add(n)
                await asyncio.sleep(pace)

        await asyncio.gather(*(sender() for _ in range(16)))

    async with service_process(env) as process, grpc.aio.insecure_channel(address) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        workflow = await deploy(stub, CRASH_WORKFLOW, name="crash")
        # Paced, so that the kill comes while starts arrive and timers fire.
        sending = asyncio.create_task(send_all(stub, workflow.id, stop_on_error=True, pace=0.05))

        async def timers_firing() -> bool:
            fired = await admin.fetchval(
                "SELECT count(*) FROM workflows.workflow_executions"
                " WHERE workflow_id = $1 AND status = 'completed'",
                uuid.UUID(workflow.id),
            )
            return len(acknowledged) >= EXECUTIONS // 3 and fired > 0

        await eventually(timers_firing, seconds=30, interval=0.01)
        process.kill()
        await sending
    before_restart = len(acknowledged)
    assert 0 < before_restart < EXECUTIONS

    async with service_process(env), grpc.aio.insecure_channel(address) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await send_all(stub, workflow.id, stop_on_error=False, pace=0)

        async def all_done() -> bool:
            done = await admin.fetchval(
                "SELECT count(*) FROM workflows.workflow_executions"
                " WHERE workflow_id = $1 AND status = 'completed'",
                uuid.UUID(workflow.id),
            )
            return bool(done == EXECUTIONS)

        await eventually(all_done, seconds=60, interval=0.2)

    rows = await admin.fetch(
        "SELECT (e.variables->>'n')::int AS n, e.user_id,"
        " array_agg(h.element_id ORDER BY h.id) FILTER (WHERE h.state = 'completed') AS path"
        " FROM workflows.workflow_executions e JOIN workflows.execution_history h"
        " ON h.execution_id = e.id WHERE e.workflow_id = $1 GROUP BY e.id",
        uuid.UUID(workflow.id),
    )
    assert len(rows) == EXECUTIONS
    assert sorted(r["n"] for r in rows) == list(range(EXECUTIONS))
    for row in rows:
        assert row["path"] == expected_path(row["n"]), row
    left = await admin.fetchval("SELECT count(*) FROM workflows.timers")
    assert left == 0


async def test_two_replicas_fire_each_timer_exactly_once(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    clock = ManualClock()
    env = service_env(
        database, {"workflows": free_port(), "users": free_port(), "metrics": free_port()}
    )
    second_env = {**env, "LIFECYCLE_WORKFLOWS_PORT": str(free_port())}
    definition = replace(DEFINITION, build=build_with(clock))
    hosts = [
        ServiceHost(definition, service_config("workflows", e), TRACER_PROVIDER)
        for e in (env, second_env)
    ]
    for host in hosts:
        await host.start()
    try:
        async with grpc.aio.insecure_channel(hosts[0].address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await deploy(
                stub, linear(start(), catch("wait", duration="PT1H"), emit("after"), end())
            )
            for _ in range(200):
                await stub.StartExecution(
                    pb.StartExecutionRequest(workflow_id=workflow.id, user_id=str(uuid.uuid4()))
                )
            await advance(clock, hours=1, seconds=1)

            async def fired() -> bool:
                count = await admin.fetchval(
                    "SELECT count(*) FROM workflows.workflow_executions"
                    " WHERE workflow_id = $1 AND status = 'completed'",
                    uuid.UUID(workflow.id),
                )
                return bool(count == 200)

            await eventually(fired)
        duplicates = await admin.fetchval(
            "SELECT count(*) FROM (SELECT h.execution_id FROM workflows.execution_history h"
            " JOIN workflows.workflow_executions e ON e.id = h.execution_id"
            " WHERE e.workflow_id = $1 AND h.element_id = 'wait' AND h.state = 'completed'"
            " GROUP BY h.execution_id HAVING count(*) > 1) d",
            uuid.UUID(workflow.id),
        )
        assert duplicates == 0
    finally:
        for host in hosts:
            await host.stop()


TODAY = date(2031, 6, 15)
CUTOFF = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - RETENTION
# Finished more than a year before TODAY: enough for three delete batches.
EXPIRED = 2 * RETENTION_BATCH + 7
# (status, started_at, completed_at)
ExecutionRow = tuple[str, datetime, datetime | None]


async def insert_executions(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, rows: list[ExecutionRow]
) -> list[uuid.UUID]:
    """Executions of one workflow, each with a history step."""
    ids = [uuid.uuid4() for _ in rows]
    await conn.execute(
        "INSERT INTO workflow_executions (id, workflow_id, workflow_version, user_id, status,"
        " started_at, completed_at) SELECT id, $1, '1.0.0', gen_random_uuid(), status, s, c"
        " FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[])"
        " AS r(id, status, s, c)",
        workflow_id,
        ids,
        [status for status, _, _ in rows],
        [started for _, started, _ in rows],
        [completed for _, _, completed in rows],
    )
    await conn.execute(
        "INSERT INTO execution_history (execution_id, element_id, element_type, state, at)"
        " SELECT id, 'start', 'startEvent', 'completed', started_at FROM workflow_executions"
        " WHERE id = ANY($1)",
        ids,
    )
    return ids


async def seed_executions(
    conn: asyncpg.Connection, expired_rows: list[ExecutionRow], kept_rows: list[ExecutionRow]
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(expired, kept) executions of a new workflow; the kept ones still
    unfinished wait on a timer, and one expired execution had an incident."""
    workflow_id = await conn.fetchval(
        "INSERT INTO workflows (name, bpmn_xml, status) VALUES ('retention', '<x/>', 'active')"
        " RETURNING id"
    )
    await conn.execute(
        "INSERT INTO workflow_versions (workflow_id, version, bpmn_xml, definition, checksum)"
        " VALUES ($1, '1.0.0', '<x/>', '{}', $2)",
        workflow_id,
        b"\0",
    )
    expired = await insert_executions(conn, workflow_id, expired_rows)
    kept = await insert_executions(conn, workflow_id, kept_rows)
    waiting = [e for e, (_, _, completed) in zip(kept, kept_rows, strict=True) if not completed]
    await conn.execute(
        "INSERT INTO execution_tokens (execution_id, token, element_id)"
        " SELECT unnest($1::uuid[]), 1, 'wait'",
        waiting,
    )
    await conn.execute(
        "INSERT INTO timers (execution_id, token, element_id, due_at)"
        " SELECT unnest($1::uuid[]), 1, 'wait', $2::timestamptz",
        waiting,
        CUTOFF + timedelta(days=800),
    )
    await conn.execute(
        "INSERT INTO incidents (execution_id, token, element_id, from_job, error_message,"
        " created_at) VALUES ($1, 1, 'task', true, 'boom', $2)",
        expired[1],
        CUTOFF - timedelta(days=2),
    )
    return expired, kept


async def test_retention_deletes_only_executions_finished_over_a_year_ago_in_batches(
    own_database: ScratchDatabase,
) -> None:
    finished = ("completed", "failed", "cancelled")
    # The first a microsecond before the cutoff, the others older.
    expired_rows: list[ExecutionRow] = [
        (
            finished[n % 3],
            CUTOFF - timedelta(days=30),
            CUTOFF - timedelta(minutes=n, microseconds=1),
        )
        for n in range(EXPIRED)
    ]
    kept_rows: list[ExecutionRow] = [
        ("completed", CUTOFF - timedelta(days=1), CUTOFF),
        ("failed", CUTOFF, CUTOFF + timedelta(days=1)),
        ("cancelled", CUTOFF, CUTOFF + timedelta(days=364)),
        # Started long ago and still waiting: never finished, so never expired.
        ("running", CUTOFF - timedelta(days=400), None),
        ("pending", CUTOFF - timedelta(days=400), None),
    ]
    owners = {o.schema: o for o in schema_owners(own_database.admin_url, env={})}
    # The audit log, kept 2 years, names an execution retention removes.
    await create_partitions(own_database, TODAY, months_behind=14)
    conn = await asyncpg.connect(own_database.admin_url)
    try:
        async with acting_as(conn, owners["workflows"]):
            expired, kept = await seed_executions(conn, expired_rows, kept_rows)
        async with acting_as(conn, owners["metrics"]):
            await conn.execute(
                "INSERT INTO lifecycle_events (event_id, event_type, workflow_execution_id,"
                " created_at) VALUES (gen_random_uuid(), 'execution.completed', $1, $2)",
                expired[0],
                expired_rows[0][2],
            )
        async with acting_as(conn, owners["workflows"]):
            report = await maintenance(conn, TODAY)
            again = await maintenance(conn, TODAY)
            left = await conn.fetch(
                "SELECT e.id, count(h.id) AS steps,"
                " (SELECT count(*) FROM timers t WHERE t.execution_id = e.id) AS timers"
                " FROM workflow_executions e"
                " LEFT JOIN execution_history h ON h.execution_id = e.id GROUP BY e.id"
            )
            orphans = await conn.fetchval(
                "SELECT (SELECT count(*) FROM execution_history WHERE execution_id = ANY($1))"
                " + (SELECT count(*) FROM incidents WHERE execution_id = ANY($1))",
                expired,
            )
        async with acting_as(conn, owners["metrics"]):
            referenced = await conn.fetchval(
                "SELECT workflow_execution_id FROM lifecycle_events"
                " WHERE event_type = 'execution.completed'"
            )
    finally:
        await conn.close()

    assert report[0] == f"deleted {EXPIRED} executions finished before {CUTOFF.date()}"
    assert again[0] == f"deleted 0 executions finished before {CUTOFF.date()}"
    assert {r["id"]: (r["steps"], r["timers"]) for r in left} == {
        execution: (1, 0 if completed else 1)
        for execution, (_, _, completed) in zip(kept, kept_rows, strict=True)
    }
    assert orphans == 0
    assert referenced == expired[0]
