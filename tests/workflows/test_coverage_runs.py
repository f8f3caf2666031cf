"""Every cell the coverage tables of docs/workflows.md mark supported runs
through the service with the meaning the docs give it: its document (the one
test_coverage.py saves, with a thrower where the event needs one) is started
for a user, the event is made to happen (a message published, the clock
moved, a signal broadcast, a job's error thrown), every job is completed, and
the execution ends having passed through the element."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from tests.support import eventually
from tests.workflows.bpmn_docs import chain, definitions, end, start
from tests.workflows.conftest import Stub, advance, deploy, execution, jobs
from tests.workflows.conftest import start as start_execution
from tests.workflows.coverage_docs import SUPPORTED, cells, document, element

ENDED = (pb.EXECUTION_STATUS_COMPLETED, pb.EXECUTION_STATUS_CANCELLED)
# The job types of the documents (coverage_docs.py).
JOB_TYPES = ("work", "send", "inner-work")
ESCALATE = element(
    "intermediateThrowEvent", "raise", '<bpmn:escalationEventDefinition escalationRef="Esc"/>'
)
COMPENSATE = element("intermediateThrowEvent", "undo-all", "<bpmn:compensateEventDefinition/>")
# The events a catching element waits for, made to happen before any job is done.
CAUGHT = ("Message", "Timer", "Timer (cycle)", "Signal", "Error")
WAITING = (
    "Start",
    "Event sub-process start (interrupting)",
    "Event sub-process start (non-interrupting)",
    "Intermediate catch",
    "Boundary (interrupting)",
    "Boundary (non-interrupting)",
)
# The workflow id the call activity's document names.
CALLED = "0b6b7d0e-6a53-4a55-9b8e-0e6f0c1d2a33"
# Cells that the timer-cycle start event's campaign runs (test_campaigns.py).
CAMPAIGN = ("Events", "Timer (cycle)", "Start")


def runnable(table: str, row: str, column: str, prefix: str) -> str:
    """The cell's document with its names made unique, and a thrower where
    nothing in it would raise the event its element catches."""
    xml = document(table, row, column)
    if row == "Escalation" and column.startswith(("Boundary", "Event sub-process")):
        # Raised inside the sub-process, or after the task when an event sub-process catches it.
        source = "inner-work" if column.startswith("Boundary") else "work"
        target = "inner-end" if column.startswith("Boundary") else "end"
        xml = xml.replace(
            f'sourceRef="{source}" targetRef="{target}"/>',
            f'sourceRef="{source}" targetRef="raise"/>{ESCALATE}'
            f'<bpmn:sequenceFlow id="raised" sourceRef="raise" targetRef="{target}"/>',
        )
    if row == "Compensation" and column.startswith("Boundary"):
        xml = xml.replace(
            'sourceRef="work" targetRef="end"/>',
            f'sourceRef="work" targetRef="undo-all"/>{COMPENSATE}'
            '<bpmn:sequenceFlow id="undone" sourceRef="undo-all" targetRef="end"/>',
        )
    for job_type in (*JOB_TYPES, "undo"):
        xml = xml.replace(f'type="{job_type}"', f'type="{prefix}-{job_type}"')
    return (
        xml.replace('name="note"', f'name="{prefix}-note"')
        .replace('name="wake"', f'name="{prefix}-wake"')
        .replace('id="Process_1"', f'id="Process_{prefix}"')
    )


async def make_it_happen(wf: Stub, clock: ManualClock, row: str, prefix: str, user: str) -> None:
    """The event of `row`, for the user's execution."""
    if row in ("Message", "Receive task"):
        await wf.PublishMessage(
            pb.PublishMessageRequest(name=f"{prefix}-note", correlation_key="k", user_id=user)
        )
    elif row.startswith("Timer"):
        await advance(clock, hours=2)
    elif row == "Signal":
        await wf.BroadcastSignal(
            pb.BroadcastSignalRequest(
                signal_name=f"{prefix}-wake", user_ids=[user], restrict_to_users=True
            )
        )
    elif row == "Error":
        for job_type in ("work", "inner-work"):
            for job in await jobs(wf, f"{prefix}-{job_type}", wait=0.1):
                await wf.ThrowError(pb.ThrowErrorRequest(job_key=job.job_key, error_code="E1"))


async def work_until_ended(
    wf: Stub, clock: ManualClock, prefix: str, execution_id: str
) -> pb.Execution:
    """Completes every job of the document until the execution ends."""
    for _ in range(8):
        found = await execution(wf, execution_id)
        if found.status in ENDED:
            return found
        for job_type in (*JOB_TYPES, "undo"):
            for job in await jobs(wf, f"{prefix}-{job_type}", wait=0.05):
                try:
                    await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
                except grpc.aio.AioRpcError as error:  # an interrupting event ended it meanwhile
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error
        listed = await wf.ListUserTasks(pb.ListUserTasksRequest(execution_id=execution_id))
        for task in listed.user_tasks:
            await wf.CompleteUserTask(pb.CompleteUserTaskRequest(user_task_id=task.id))
        await advance(clock, hours=2)
    return await execution(wf, execution_id)


@pytest.mark.parametrize(
    ("table", "row", "column"),
    [c[:3] for c in cells() if c[3] == SUPPORTED and c[:3] != CAMPAIGN],
)
async def test_each_supported_cell_runs_through_its_element(
    wf: Stub, clock: ManualClock, table: str, row: str, column: str
) -> None:
    prefix = uuid.uuid4().hex[:8]
    xml = runnable(table, row, column, prefix)
    if row == "Call activity":
        called = await deploy(wf, definitions(start(), end(), *chain("start", "end")))
        xml = xml.replace(CALLED, called.id)
    workflow = await deploy(wf, xml)
    user = str(uuid.uuid4())
    started = await start_execution(wf, workflow, user, key="k")
    await make_it_happen(wf, clock, row, prefix, user)
    if row in CAUGHT and column in WAITING:

        async def caught() -> bool:
            return "ev" in {step.element_id for step in (await execution(wf, started.id)).history}

        await eventually(caught)
    ended = await work_until_ended(wf, clock, prefix, started.id)
    passed = {step.element_id for step in ended.history}
    # A compensation boundary event leaves no step of its own: its handler runs.
    element = "el" if table == "Elements" else "ev"
    if (row, column) == ("Compensation", "Boundary (interrupting)"):
        element = "undo"
    if (row, column) == ("Error", "End"):
        # Uncaught, an error end event is an incident on it (docs/workflows.md).
        assert [i.element_id for i in ended.incidents] == ["ev"]
        return
    assert ended.status == pb.EXECUTION_STATUS_COMPLETED, (ended.status, ended.incidents)
    assert element in passed, sorted(passed)
