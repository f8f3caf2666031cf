"""Elements in the forms test_elements.py leaves out: literal timer dates, on a
catch event and on the start event, a called execution that fails, and an
element saved by an older version of the engine."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import dict_to_struct, struct_to_dict
from tests.workflows.bpmn_docs import call, catch, end, linear, service, start, with_output
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    deploy_stored,
    execution,
    jobs,
    path,
    until_status,
)
from tests.workflows.conftest import start as start_execution

COMPLETED, RUNNING = pb.EXECUTION_STATUS_COMPLETED, pb.EXECUTION_STATUS_RUNNING


def hours_from_now(clock: ManualClock, hours: int) -> str:
    return (clock.now() + timedelta(hours=hours)).replace(microsecond=0).isoformat()


async def test_a_catch_event_with_a_literal_date_waits_until_then(
    wf: Stub, clock: ManualClock
) -> None:
    due = hours_from_now(clock, 5)
    workflow = await deploy(wf, linear(start(), catch("until", date=due), end()))
    running = await start_execution(wf, workflow)
    assert list(running.current_node_ids) == ["until"]
    await advance(clock, hours=4)
    assert (await execution(wf, running.id)).status == RUNNING
    await advance(clock, hours=1, seconds=1)
    assert path(await until_status(wf, running.id, COMPLETED)) == ["start", "until", "end"]


async def test_a_timer_start_event_with_a_date_keeps_the_execution_pending_until_then(
    wf: Stub, clock: ManualClock
) -> None:
    due = hours_from_now(clock, 3)
    workflow = await deploy(wf, linear(start(date=due), end()))
    waiting = await start_execution(wf, workflow)
    assert waiting.status == pb.EXECUTION_STATUS_PENDING
    await advance(clock, hours=2)
    assert (await execution(wf, waiting.id)).status == pb.EXECUTION_STATUS_PENDING
    await advance(clock, hours=1, seconds=1)
    assert path(await until_status(wf, waiting.id, COMPLETED)) == ["start", "end"]


async def complete_child_job(wf: Stub, job_type: str, **variables: object) -> None:
    (job,) = await jobs(wf, job_type)
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct(variables))
    )


async def test_a_called_execution_that_fails_is_an_incident_that_resolve_calls_again(
    wf: Stub,
) -> None:
    job_type = "child-doubling"
    doubling = with_output(service("double", job_type), "doubled", "=n * 2")
    child = await deploy(wf, linear(start(), doubling, end()), name="failing child")
    parent = await deploy(wf, linear(start(), call("call", child.id), end()), name="caller")
    running = await start_execution(wf, parent)

    await complete_child_job(wf, job_type, n="two")
    stuck = await execution(wf, running.id)
    assert stuck.status == RUNNING and list(stuck.current_node_ids) == ["call"]
    (incident,) = stuck.incidents
    assert incident.element_id == "call" and " failed: output 'doubled'" in incident.error_message
    children = await wf.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=child.id, user_id=running.user_id)
    )
    assert [c.status for c in children.executions] == [pb.EXECUTION_STATUS_FAILED]

    await wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=incident.id))
    await complete_child_job(wf, job_type, n=2)
    done = await execution(wf, running.id)
    assert done.status == COMPLETED and path(done) == ["start", "call", "end"]
    assert struct_to_dict(done.variables) == {"n": 2, "doubled": 4}
    assert [i.resolved for i in done.incidents] == [True]


async def test_a_none_throw_event_saved_before_it_was_refused_is_passed_through(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    # Such versions were accepted once: their stored graph holds the element.
    workflow = await deploy_stored(
        wf,
        admin,
        linear(start(), catch("throw", duration="PT1H"), end()),
        "throw",
        type="intermediateThrowEvent",
        event=None,
        timer=None,
    )
    done = await start_execution(wf, workflow)
    assert done.status == COMPLETED, done
    assert path(done) == ["start", "throw", "end"]
