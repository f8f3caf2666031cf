"""A users service and a workflows service on a manual clock, per test session."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.workflows.bpmn import parse
from services.workflows.service import DEFINITION, build_with
from services.workflows.stepper import Stepper
from services.workflows.store.locks import USER_LOCK
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    eventually,
    free_port,
    rpc_error,
    running,
    service_config,
    service_env,
    violated_fields,
)

if TYPE_CHECKING:
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub

    Stub = WorkflowServiceAsyncStub
else:
    Stub = Any


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    return ManualClock(datetime(2030, 1, 1, 9, 0, tzinfo=UTC))


@pytest.fixture(scope="session")
def wf_env(database: ScratchDatabase) -> dict[str, str]:
    return service_env(
        database, {"users": free_port(), "workflows": free_port(), "metrics": free_port()}
    )


@pytest.fixture(scope="session")
async def wf_users(wf_env: dict[str, str]) -> AsyncIterator[users_pb2_grpc.UserServiceAsyncStub]:
    async with running("users", wf_env) as host, grpc.aio.insecure_channel(host.address) as channel:
        yield users_pb2_grpc.UserServiceStub(channel)


@pytest.fixture(scope="session")
def wf_built() -> list[Stepper]:
    """The stepper of each workflows service the session built."""
    return []


@pytest.fixture(scope="session")
async def wf_host(
    wf_env: dict[str, str], clock: ManualClock, wf_users: Any, wf_built: list[Stepper]
) -> AsyncIterator[ServiceHost]:
    definition = replace(DEFINITION, build=build_with(clock, on_built=wf_built.append))
    host = ServiceHost(definition, service_config("workflows", wf_env), TRACER_PROVIDER)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture(scope="session")
def wf_stepper(wf_host: ServiceHost, wf_built: list[Stepper]) -> Stepper:
    """The stepper of the workflows service `wf` calls."""
    return wf_built[-1]


@pytest.fixture(scope="session")
async def wf(wf_host: ServiceHost) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(wf_host.address) as channel:
        yield workflows_pb2_grpc.WorkflowServiceStub(channel)


async def deploy(stub: Stub, bpmn: str, name: str = "test workflow") -> pb.Workflow:
    """Creates and activates a workflow."""
    created = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name=name, bpmn_xml=bpmn))
    )
    activated = await stub.ActivateWorkflow(
        pb.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return activated.workflow


async def incident_of(stub: Stub, execution_id: str) -> pb.Incident:
    """The execution's one incident, once it has it."""
    found: list[pb.Incident] = []

    async def raised() -> bool:
        found[:] = (await execution(stub, execution_id)).incidents
        return bool(found)

    await eventually(raised)
    (incident,) = found
    return incident


async def refused(stub: Stub, bpmn: str) -> str:
    """The message of the INVALID_ARGUMENT that saving `bpmn` gets, naming the document."""
    error = await rpc_error(
        stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=pb.Workflow(name="x", bpmn_xml=bpmn)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert set(violated_fields(error)) == {"workflow.bpmn_xml"}
    return error.details() or ""


async def deploy_stored(
    stub: Stub, admin: asyncpg.Connection, bpmn: str, element: str, **changes: Any
) -> pb.Workflow:
    """Creates and activates a workflow whose stored graph has `changes` in one
    element, as a version saved by an older engine (or damaged since) holds it:
    executions run the stored graph, never the XML again."""
    created = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name="stored graph", bpmn_xml=bpmn))
    )
    graph = parse(bpmn, 1 << 20).to_json()
    (node,) = [node for node in graph["nodes"] if node["id"] == element]
    node.update(changes)
    await admin.execute(
        "UPDATE workflows.workflow_versions SET definition = $1::jsonb WHERE workflow_id = $2",
        json.dumps(graph),
        uuid.UUID(created.workflow.id),
    )
    activated = await stub.ActivateWorkflow(
        pb.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return activated.workflow


async def start(
    stub: Stub, workflow: pb.Workflow, user_id: str | None = None, **variables: Any
) -> pb.Execution:
    reply = await stub.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=workflow.id,
            user_id=user_id or str(uuid.uuid4()),
            variables=dict_to_struct(variables),
        )
    )
    return reply.execution


async def execution(stub: Stub, execution_id: str) -> pb.Execution:
    reply = await stub.GetExecution(pb.GetExecutionRequest(execution_id=execution_id))
    return reply.execution


async def until_status(
    stub: Stub, execution_id: str, status: int, seconds: float = 10.0
) -> pb.Execution:
    found: list[pb.Execution] = []

    async def check() -> bool:
        found[:] = [await execution(stub, execution_id)]
        return found[0].status == status

    try:
        await eventually(check, seconds)
    except AssertionError as error:
        raise AssertionError(f"execution stayed {found[0]}") from error
    return found[0]


async def until_waiting_at(stub: Stub, execution_id: str, *nodes: str) -> pb.Execution:
    found: list[pb.Execution] = []

    async def check() -> bool:
        found[:] = [await execution(stub, execution_id)]
        return sorted(found[0].current_node_ids) == sorted(nodes)

    try:
        await eventually(check)
    except AssertionError as error:
        raise AssertionError(f"execution is at {found[0].current_node_ids}") from error
    return found[0]


def path(executed: pb.Execution, state: str = "completed") -> list[str]:
    return [step.element_id for step in executed.history if step.state == state]


async def advance(clock: ManualClock, **delta: float) -> None:
    clock.advance(timedelta(**delta))
    await asyncio.sleep(0)


async def new_user(users: users_pb2_grpc.UserServiceAsyncStub, **attributes: Any) -> str:
    reply = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"wf-{uuid.uuid4().hex[:10]}@example.com",
                attributes=dict_to_struct(attributes),
            )
        )
    )
    return reply.user.id


async def jobs(
    wf: Stub, job_type: str, count: int = 10, wait: float = 0.5
) -> list[pb.ActivatedJob]:
    found: list[pb.ActivatedJob] = []
    request = pb.ActivateJobsRequest(
        job_type=job_type,
        worker="test",
        max_jobs_to_activate=count,
        request_timeout=duration_pb2.Duration(nanos=int(wait * 1e9)),
    )
    async for reply in wf.ActivateJobs(request):
        found += reply.jobs
    return found


async def publish(
    wf: Stub, name: str, user: str, ttl_seconds: int = 0, message_id: str = "", **variables: Any
) -> pb.PublishMessageResponse:
    return await wf.PublishMessage(
        pb.PublishMessageRequest(
            name=name,
            correlation_key=user,
            variables=dict_to_struct(variables),
            time_to_live=duration_pb2.Duration(seconds=ttl_seconds),
            message_id=message_id,
        )
    )


async def events_of(host: ServiceHost, execution_id: str) -> list[metrics_pb2.LifecycleEvent]:
    assert host.context is not None
    rows = await host.context.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = 'metrics.record_events' ORDER BY id"
    )
    return [
        event
        for row in rows
        for event in metrics_pb2.RecordEventsRequest.FromString(row["payload"]).events
        if event.workflow_execution_id == execution_id
    ]


async def until_waiting_for_user(
    admin: asyncpg.Connection, user: str | uuid.UUID, waiters: int = 1
) -> list[tuple[int, datetime]]:
    """Until `waiters` transactions wait for the user's advisory lock (store.locks.USER_LOCK);
    each one's backend and transaction start, in the order they began to wait."""
    found: list[tuple[int, datetime]] = []

    async def waiting() -> bool:
        rows = await admin.fetch(
            "SELECT a.pid, a.xact_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND NOT l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid::bigint = $1 AND l.objsubid = 2"
            " AND l.objid::bigint = hashtext($2::uuid::text)::bigint & 4294967295"
            " ORDER BY l.waitstart",
            USER_LOCK,
            str(user),
        )
        found[:] = [(row["pid"], row["xact_start"]) for row in rows]
        return len(found) >= waiters

    await eventually(waiting)
    return found


async def until_ended(admin: asyncpg.Connection, waiter: tuple[int, datetime]) -> None:
    """Until the transaction `until_waiting_for_user` found has ended."""

    async def ended() -> bool:
        started = await admin.fetchval(
            "SELECT xact_start FROM pg_stat_activity WHERE pid = $1", waiter[0]
        )
        return bool(started != waiter[1])

    await eventually(ended)
