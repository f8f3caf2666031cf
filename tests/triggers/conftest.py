"""The triggers service with real users, workflows and metrics services, on
ports and a database of their own, for the session; the triggers service runs
on a clock the tests can move forward.

The database is their own because this suite's users service delivers to a
live metrics service: on the shared database its relay would also deliver the
rows the session's users service leaves in its outbox for other tests to read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.clock import ShiftedClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.triggers.service import DEFINITION, build_with
from services.workflows.service import DEFINITION as WORKFLOWS
from tests.conftest import migrated_database
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    eventually,
    free_port,
    running,
    service_config,
    service_env,
)
from tests.workflows.bpmn_docs import end, linear, receive, service, start

if TYPE_CHECKING:
    from lifecycle.metrics.v1.metrics_pb2_grpc import MetricsServiceAsyncStub
    from lifecycle.triggers.v1.triggers_pb2_grpc import TriggerServiceAsyncStub
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub
else:
    TriggerServiceAsyncStub = UserServiceAsyncStub = Any
    WorkflowServiceAsyncStub = MetricsServiceAsyncStub = Any

# Waits for a first login, then moves the user to Activation.
ONBOARDING = linear(
    start(),
    receive("first_login", "first_login"),
    service("activate", "lifecycle.set_stage", stage="Activation"),
    end(),
)
# Ends at once.
INSTANT = linear(start(), end())


@dataclass
class Suite:
    env: dict[str, str]
    clock: ShiftedClock
    triggers: TriggerServiceAsyncStub
    users: UserServiceAsyncStub
    workflows: WorkflowServiceAsyncStub
    metrics: MetricsServiceAsyncStub
    host: ServiceHost
    workflows_host: ServiceHost

    async def stop_workflows(self) -> None:
        await self.workflows_host.stop()

    async def start_workflows(self) -> None:
        """A new workflows server on the same port."""
        self.workflows_host = workflows_host(self.env)
        await self.workflows_host.start()


def workflows_host(env: dict[str, str]) -> ServiceHost:
    return ServiceHost(WORKFLOWS, service_config("workflows", env), TRACER_PROVIDER)


def triggers_host(env: dict[str, str], clock: ShiftedClock) -> ServiceHost:
    definition = replace(DEFINITION, build=build_with(clock))
    return ServiceHost(definition, service_config("triggers", env), TRACER_PROVIDER)


@asynccontextmanager
async def serving(host: ServiceHost) -> AsyncIterator[ServiceHost]:
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture(scope="session")
async def triggers_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    async with migrated_database(server_url, "lifecycle_triggers") as database:
        yield database


@pytest.fixture
async def admin(triggers_database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """The suite's database, where the shared `admin` would read another."""
    conn = await asyncpg.connect(triggers_database.admin_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def tr_env(triggers_database: ScratchDatabase) -> dict[str, str]:
    ports = {name: free_port() for name in ("users", "workflows", "triggers", "metrics")}
    return service_env(
        triggers_database,
        ports,
        LIFECYCLE_OUTBOX_POLL_SECONDS="0.1",
        LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS="0",
        LIFECYCLE_WORKFLOWS_POLL_SECONDS="0.1",
        LIFECYCLE_LOG_LEVEL="ERROR",
    )


@pytest.fixture(scope="session")
async def suite(tr_env: dict[str, str]) -> AsyncIterator[Suite]:
    clock = ShiftedClock()
    async with (
        running("users", tr_env),
        running("metrics", tr_env),
        serving(workflows_host(tr_env)) as first_workflows,
        serving(triggers_host(tr_env, clock)) as host,
    ):
        channels = [
            grpc.aio.insecure_channel(tr_env[f"LIFECYCLE_{name.upper()}_ADDRESS"])
            for name in ("triggers", "users", "workflows", "metrics")
        ]
        try:
            suite = Suite(
                tr_env,
                clock,
                triggers_pb2_grpc.TriggerServiceStub(channels[0]),
                users_pb2_grpc.UserServiceStub(channels[1]),
                workflows_pb2_grpc.WorkflowServiceStub(channels[2]),
                metrics_pb2_grpc.MetricsServiceStub(channels[3]),
                host,
                first_workflows,
            )
            yield suite
        finally:
            for channel in channels:
                await channel.close(None)
            await suite.workflows_host.stop()


@pytest.fixture(autouse=True)
def reset_clock(suite: Suite) -> None:
    suite.clock.reset()


async def new_user(users: UserServiceAsyncStub, **attributes: Any) -> str:
    reply = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"tr-{uuid.uuid4().hex[:12]}@example.com",
                attributes=dict_to_struct(attributes),
            )
        )
    )
    return reply.user.id


async def deploy(workflows: WorkflowServiceAsyncStub, bpmn: str, *, active: bool = True) -> str:
    created = await workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(name=f"wf-{uuid.uuid4().hex[:6]}", bpmn_xml=bpmn)
        )
    )
    if active:
        await workflows.ActivateWorkflow(
            workflows_pb2.ActivateWorkflowRequest(workflow_id=created.workflow.id)
        )
    return created.workflow.id


def unique_type(base: str = "evt") -> str:
    """An event type no other test uses, so that triggers of other tests stay out."""
    return f"{base}_{uuid.uuid4().hex[:10]}"


async def create_trigger(
    triggers: TriggerServiceAsyncStub,
    event_type: str,
    workflow_id: str,
    conditions: dict[str, Any] | None = None,
    reentry: pb.ReentryPolicy | None = None,
) -> pb.Trigger:
    reply = await triggers.CreateTrigger(
        pb.CreateTriggerRequest(
            trigger=pb.Trigger(
                name=f"on {event_type}",
                event_type=event_type,
                conditions=dict_to_struct(conditions),
                workflow_id=workflow_id,
                reentry=reentry,
            )
        )
    )
    return reply.trigger


def event(user_id: str, event_type: str, message_id: str | None = None, **data: Any) -> pb.Event:
    return pb.Event(
        user_id=user_id,
        event_type=event_type,
        data=dict_to_struct(data),
        message_id=message_id or uuid.uuid4().hex,
    )


async def track(triggers: TriggerServiceAsyncStub, *events: pb.Event) -> pb.TrackEventsResponse:
    return await triggers.TrackEvents(pb.TrackEventsRequest(events=list(events)))


async def executions_of(
    triggers: TriggerServiceAsyncStub, *, trigger_id: str = "", user_id: str = ""
) -> list[pb.TriggerExecution]:
    found: list[pb.TriggerExecution] = []
    token = ""
    while True:
        reply = await triggers.ListTriggerExecutions(
            pb.ListTriggerExecutionsRequest(
                trigger_id=trigger_id, user_id=user_id, page_token=token, page_size=1000
            )
        )
        found += reply.trigger_executions
        token = reply.next_page_token
        if not token:
            return found


async def settled(
    triggers: TriggerServiceAsyncStub, trigger_id: str, count: int, user_id: str = ""
) -> list[pb.TriggerExecution]:
    """The trigger's `count` executions (of one user, for a trigger on an event
    type that other tests' services also send), once every firing got its answer."""
    found: list[pb.TriggerExecution] = []

    async def done() -> bool:
        found[:] = await executions_of(triggers, trigger_id=trigger_id, user_id=user_id)
        return len(found) == count and all(
            e.workflow_execution_id or e.HasField("signal") or e.skip_reason or not e.condition_met
            for e in found
        )

    await eventually(done)
    return found


async def lifecycle_events(
    metrics: MetricsServiceAsyncStub, user_id: str, *types: str
) -> list[metrics_pb2.LifecycleEvent]:
    reply = await metrics.ListEvents(
        metrics_pb2.ListEventsRequest(user_id=user_id, event_types=list(types))
    )
    return list(reply.events)
