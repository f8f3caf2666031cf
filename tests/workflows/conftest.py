"""A users service and a workflows service on a manual clock, per test session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import duration_pb2

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.workflows.clock import ManualClock
from services.workflows.service import DEFINITION, build_with
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    free_port,
    running,
    service_config,
    service_env,
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
async def wf_host(
    wf_env: dict[str, str], clock: ManualClock, wf_users: Any
) -> AsyncIterator[ServiceHost]:
    definition = replace(DEFINITION, build=build_with(clock))
    host = ServiceHost(definition, service_config("workflows", wf_env), TRACER_PROVIDER)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


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


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float = 10.0, interval: float = 0.02
) -> None:
    for _ in range(int(seconds / interval)):
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError("the condition never held")


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
