"""Errors a called execution does not catch go up to its call activity, as in
Zeebe: a boundary event or an event sub-process of a caller catches them (the
call is terminated with its called execution); caught nowhere, the incident
stays where the error was thrown."""

from __future__ import annotations

import uuid

from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.workflows.bpmn_docs import boundary, call, chain, definitions, end, service, start
from tests.workflows.bpmn_esp_docs import error_end, esp, on_error
from tests.workflows.conftest import (
    Stub,
    deploy,
    execution,
    incident_of,
    jobs,
    path,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING
CANCELLED = pb.EXECUTION_STATUS_CANCELLED


def throwing_child(code: str) -> str:
    """A process that ends with an error end event of `code` it does not catch."""
    return definitions(start(), error_end("failed", code), *chain("start", "failed"))


def working_child(task_type: str) -> str:
    """A process whose job may ThrowError."""
    return definitions(start(), service("work", task_type), end(), *chain("start", "work", "end"))


def caller(child_id: str, *catching: str) -> str:
    """start → call the child → end; `catching` adds error catchers (with their
    paths to `handled`)."""
    handled = [end("handled")] if any('targetRef="handled"' in c for c in catching) else []
    return definitions(
        start(), call("call", child_id), end(), *handled, *chain("start", "call", "end"), *catching
    )


def error_boundary(code: str) -> list[str]:
    return [
        boundary("caught", "call", error=code),
        '<bpmn:sequenceFlow id="f_caught" sourceRef="caught" targetRef="handled"/>',
    ]


async def child_of(wf: Stub, child: pb.Workflow, user_id: str) -> pb.Execution:
    reply = await wf.ListExecutions(pb.ListExecutionsRequest(workflow_id=child.id, user_id=user_id))
    (found,) = reply.executions
    return found


async def test_a_boundary_event_on_the_call_activity_catches_the_childs_error_end(
    wf: Stub,
) -> None:
    child = await deploy(wf, throwing_child("declined"))
    parent = await deploy(wf, caller(child.id, *error_boundary("declined")))
    user = str(uuid.uuid4())
    done = await start_execution(wf, parent, user)
    assert done.status == COMPLETED, done
    assert "caught" in path(done) and "handled" in path(done)
    assert "call" in path(done, "terminated")
    called = await execution(wf, (await child_of(wf, child, user)).id)
    assert called.status == CANCELLED
    assert not called.incidents


async def test_an_error_event_sub_process_of_the_caller_catches_a_job_error(wf: Stub) -> None:
    task_type = f"child.work.{uuid.uuid4().hex[:8]}"
    child = await deploy(wf, working_child(task_type))
    recovery = esp(
        "recover",
        on_error("declined"),
        end("recovered"),
        '<bpmn:sequenceFlow id="f_recover" sourceRef="recover_start" targetRef="recovered"/>',
    )
    parent = await deploy(wf, caller(child.id, recovery))
    user = str(uuid.uuid4())
    started = await start_execution(wf, parent, user)
    (job,) = await jobs(wf, task_type)
    await wf.ThrowError(
        pb.ThrowErrorRequest(job_key=job.job_key, error_code="declined", error_message="no")
    )
    done = await until_status(wf, started.id, COMPLETED)
    assert "recovered" in path(done)
    called = await execution(wf, (await child_of(wf, child, user)).id)
    assert called.status == CANCELLED and not called.incidents
    assert not await jobs(wf, task_type, wait=0.1)


async def test_an_error_no_caller_catches_is_an_incident_where_it_was_thrown(wf: Stub) -> None:
    child = await deploy(wf, throwing_child("declined"))
    parent = await deploy(wf, caller(child.id, *error_boundary("other")))
    user = str(uuid.uuid4())
    started = await start_execution(wf, parent, user)
    called = await child_of(wf, child, user)
    incident = await incident_of(wf, called.id)
    assert incident.element_id == "failed"
    assert "error 'declined' thrown by the end event and not caught" in incident.error_message
    waiting = await until_waiting_at(wf, started.id, "call")
    assert waiting.status == RUNNING and not waiting.incidents


async def test_the_error_goes_up_through_callers_until_one_catches_it(wf: Stub) -> None:
    child = await deploy(wf, throwing_child("declined"))
    middle = await deploy(wf, caller(child.id))
    top = await deploy(wf, caller(middle.id, *error_boundary("")))
    user = str(uuid.uuid4())
    done = await start_execution(wf, top, user)
    assert done.status == COMPLETED and "handled" in path(done)
    for workflow in (middle, child):
        ended = await execution(wf, (await child_of(wf, workflow, user)).id)
        assert ended.status == CANCELLED and not ended.incidents


async def test_an_error_the_child_catches_itself_does_not_reach_the_caller(wf: Stub) -> None:
    handled_inside = definitions(
        start(),
        error_end("failed", "declined"),
        esp(
            "fix",
            on_error("declined"),
            end("fix_end"),
            '<bpmn:sequenceFlow id="f_fix" sourceRef="fix_start" targetRef="fix_end"/>',
        ),
        *chain("start", "failed"),
    )
    child = await deploy(wf, handled_inside)
    parent = await deploy(wf, caller(child.id, *error_boundary("declined")))
    done = await start_execution(wf, parent)
    assert done.status == COMPLETED, done
    assert "end" in path(done) and "caught" not in path(done)
