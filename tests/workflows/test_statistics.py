"""GetWorkflowStatistics: per element, the executions waiting there, the times it
was completed and its open incidents, as the executions themselves tell them."""

from __future__ import annotations

import uuid
from collections import Counter

import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.support import rpc_error
from tests.workflows import bpmn_docs as doc
from tests.workflows.conftest import Stub, deploy, execution, incident_of, jobs, start


def _job_then_message(job_type: str) -> str:
    return doc.linear(
        doc.start(), doc.service("work", job_type), doc.receive("wait", "go"), doc.end()
    )


async def _statistics(
    wf: Stub, workflow_id: str, version: str = ""
) -> pb.GetWorkflowStatisticsResponse:
    return await wf.GetWorkflowStatistics(
        pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id, version=version)
    )


async def test_the_counts_are_what_the_executions_say(wf: Stub) -> None:
    job_type = f"stats-{uuid.uuid4().hex[:8]}"
    workflow = await deploy(wf, _job_then_message(job_type))
    for _ in range(4):
        await start(wf, workflow)
    done, done_too, failing = await jobs(wf, job_type, count=3)
    for job in (done, done_too):
        await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
    await wf.FailJob(pb.FailJobRequest(job_key=failing.job_key, retries=0, error_message="down"))
    await incident_of(wf, failing.execution_id)

    listed = await wf.ListExecutions(pb.ListExecutionsRequest(workflow_id=workflow.id))
    waiting = Counter(node for e in listed.executions for node in e.current_node_ids)
    completed: Counter[str] = Counter()
    incidents: Counter[str] = Counter()
    for listed_execution in listed.executions:
        full = await execution(wf, listed_execution.id)
        completed.update(s.element_id for s in full.history if s.state == "completed")
        incidents.update(i.element_id for i in full.incidents if not i.resolved)

    reply = await _statistics(wf, workflow.id)
    counted = {e.element_id: (e.active, e.completed, e.incidents) for e in reply.elements}
    expected = {
        element: (waiting[element], completed[element], incidents[element])
        for element in waiting.keys() | completed.keys() | incidents.keys()
    }
    assert reply.version == workflow.version
    assert counted == expected
    assert counted["work"] == (2, 2, 1)
    assert counted["wait"] == (2, 0, 0)


async def test_an_unknown_version_or_workflow_is_not_found(wf: Stub) -> None:
    workflow = await deploy(wf, _job_then_message("stats-none"))
    assert (await _statistics(wf, workflow.id)).elements == []
    for workflow_id, version in ((workflow.id, "9.9.9"), (str(uuid.uuid4()), "")):
        error = await rpc_error(_statistics(wf, workflow_id, version))
        assert error.code() == grpc.StatusCode.NOT_FOUND
