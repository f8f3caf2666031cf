"""Durability: a service process killed in the middle of 1,000 executions
loses nothing once restarted; two replicas fire each timer once; retention
deletes old finished executions in batches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.migrations import acting_as
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.workflows.clock import ManualClock
from services.workflows.service import DEFINITION, build_with, maintenance
from suite.registry import schema_owners
from tests.support import TRACER_PROVIDER, ScratchDatabase, free_port, service_config, service_env
from tests.workflows.bpmn_docs import catch, definitions, emit, end, flow, linear, start, xor
from tests.workflows.conftest import Stub, advance, deploy, eventually

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


@asynccontextmanager
async def service_process(env: dict[str, str]) -> AsyncIterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "suite.cli", "serve", "workflows"],
        env={**os.environ, **env, "LIFECYCLE_LOG_LEVEL": "ERROR"},
        stderr=subprocess.DEVNULL,
    )
    address = env["LIFECYCLE_WORKFLOWS_ADDRESS"]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


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


async def test_retention_deletes_executions_finished_over_a_year_ago(
    database: ScratchDatabase, admin: asyncpg.Connection, wf: Stub, clock: ManualClock
) -> None:
    workflow = await deploy(wf, linear(start(), emit("x"), end()))
    for _ in range(3):
        await wf.StartExecution(
            pb.StartExecutionRequest(workflow_id=workflow.id, user_id=str(uuid.uuid4()))
        )
    owner = next(o for o in schema_owners(database.admin_url, env={}) if o.schema == "workflows")
    async with acting_as(admin, owner):
        kept = await maintenance(admin, (clock.now() + timedelta(days=364)).date())
        count = await admin.fetchval(
            "SELECT count(*) FROM workflow_executions WHERE workflow_id = $1",
            uuid.UUID(workflow.id),
        )
        assert count == 3 and kept[0].startswith("deleted ")
        report = await maintenance(admin, (clock.now() + timedelta(days=367)).date())
        count = await admin.fetchval(
            "SELECT count(*) FROM workflow_executions WHERE workflow_id = $1",
            uuid.UUID(workflow.id),
        )
    assert count == 0
    assert report[0].startswith("deleted ") and not report[0].startswith("deleted 0")
