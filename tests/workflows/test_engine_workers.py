"""The timer and built-in job workers go on past an execution they cannot step
(here: one whose stored graph is damaged): that execution is set aside, its
timers postponed or its job given an incident, and the others are done."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from services.workflows.domain import SET_STAGE
from services.workflows.timers import SET_ASIDE
from tests.support import eventually
from tests.workflows.bpmn_docs import catch, end, linear, service, start
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    deploy_stored,
    execution,
    new_user,
    until_status,
)
from tests.workflows.conftest import start as start_execution

COMPLETED, RUNNING = pb.EXECUTION_STATUS_COMPLETED, pb.EXECUTION_STATUS_RUNNING
WAITING = linear(start(), catch("wait", duration="PT1H"), end())
SETTING_STAGE = linear(start(), service("stage", SET_STAGE, stage="Activation"), end())


@pytest.fixture
async def broken(admin: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """Executions of damaged graphs, deleted after the test so that no later
    test's worker round meets them."""
    ids: list[str] = []
    yield ids
    await admin.execute(
        "DELETE FROM workflows.workflow_executions WHERE id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in ids],
    )


async def incident_of(wf: Stub, execution_id: str) -> pb.Incident:
    found: list[pb.Incident] = []

    async def raised() -> bool:
        found[:] = (await execution(wf, execution_id)).incidents
        return bool(found)

    await eventually(raised)
    (incident,) = found
    return incident


async def test_the_timer_worker_sets_aside_an_execution_it_cannot_step_and_fires_the_others(
    wf: Stub, admin: asyncpg.Connection, clock: ManualClock, broken: list[str]
) -> None:
    # Its timer leads along a flow the stored graph no longer has.
    damaged = await deploy_stored(wf, admin, WAITING, "wait", outgoing=["gone"])
    bad = await start_execution(wf, damaged)
    broken.append(bad.id)
    good = await start_execution(wf, await deploy(wf, WAITING))

    # Both are due in the same round.
    await advance(clock, hours=1, seconds=1)
    assert (await until_status(wf, good.id, COMPLETED)).current_node_ids == []
    left = await execution(wf, bad.id)
    assert left.status == RUNNING and list(left.current_node_ids) == ["wait"]
    due = await admin.fetchval(
        "SELECT due_at FROM workflows.timers WHERE execution_id = $1", uuid.UUID(bad.id)
    )
    assert due == clock.now() + SET_ASIDE

    after = await start_execution(wf, await deploy(wf, WAITING))
    await advance(clock, hours=1, seconds=1)
    await until_status(wf, after.id, COMPLETED)


async def test_the_job_worker_gives_an_incident_to_a_job_it_cannot_do_and_goes_on(
    wf: Stub, admin: asyncpg.Connection, wf_users: users_pb2_grpc.UserServiceAsyncStub
) -> None:
    task = {"type": SET_STAGE, "retries": 3, "headers": {"stage": "Nowhere"}}
    damaged = await deploy_stored(wf, admin, SETTING_STAGE, "stage", task=task)
    bad = await start_execution(wf, damaged, await new_user(wf_users))

    incident = await incident_of(wf, bad.id)
    assert incident.element_id == "stage"
    assert incident.error_message == "the engine could not do the job: KeyError: 'Nowhere'"
    assert (await execution(wf, bad.id)).status == RUNNING
    good = await start_execution(wf, await deploy(wf, SETTING_STAGE), await new_user(wf_users))
    await until_status(wf, good.id, COMPLETED)


async def test_the_job_worker_gives_an_incident_to_a_job_it_cannot_finish_and_goes_on(
    wf: Stub,
    admin: asyncpg.Connection,
    wf_users: users_pb2_grpc.UserServiceAsyncStub,
    broken: list[str],
) -> None:
    # Done by the users service, then the step leads along a flow the graph no longer has.
    damaged = await deploy_stored(wf, admin, SETTING_STAGE, "stage", outgoing=["gone"])
    bad = await start_execution(wf, damaged, await new_user(wf_users))
    broken.append(bad.id)

    incident = await incident_of(wf, bad.id)
    assert incident.element_id == "stage"
    assert incident.error_message == "the engine could not finish the job: KeyError: 'gone'"
    left = await execution(wf, bad.id)
    assert left.status == RUNNING and list(left.current_node_ids) == ["stage"]
    good = await start_execution(wf, await deploy(wf, SETTING_STAGE), await new_user(wf_users))
    await until_status(wf, good.id, COMPLETED)
