"""ListExecutions' "started between" filter (started_after inclusive,
started_before exclusive), with the other filters and across pages, and
ListWorkflowVersions: a workflow's versions, newest first, paged."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from tests.support import rpc_error, violated_fields
from tests.workflows import bpmn_docs as doc
from tests.workflows.conftest import Stub, advance, deploy, start


def _waiting() -> str:
    return doc.linear(doc.start(), doc.receive("wait", "go"), doc.end())


async def _five_a_minute_apart(wf: Stub, clock: ManualClock) -> tuple[str, list[pb.Execution]]:
    """A workflow and five executions of it, in the order they started."""
    workflow = await deploy(wf, _waiting())
    started = []
    for _ in range(5):
        started.append(await start(wf, workflow))
        await advance(clock, minutes=1)
    return workflow.id, started


def _between(
    workflow_id: str,
    after: timestamp_pb2.Timestamp | None,
    before: timestamp_pb2.Timestamp | None,
    **fields: object,
) -> pb.ListExecutionsRequest:
    request = pb.ListExecutionsRequest(workflow_id=workflow_id, **fields)  # type: ignore[arg-type]
    if after is not None:
        request.started_after.CopyFrom(after)
    if before is not None:
        request.started_before.CopyFrom(before)
    return request


def _ids(executions: Iterable[pb.Execution]) -> list[str]:
    return [e.id for e in executions]


async def test_started_after_is_inclusive_and_started_before_exclusive(
    wf: Stub, clock: ManualClock
) -> None:
    workflow_id, started = await _five_a_minute_apart(wf, clock)
    times = [e.start_time for e in started]
    assert len({t.ToNanoseconds() for t in times}) == 5
    listed = await wf.ListExecutions(_between(workflow_id, times[1], times[3]))
    assert _ids(listed.executions) == _ids([started[2], started[1]])
    from_second = await wf.ListExecutions(_between(workflow_id, times[1], None))
    assert _ids(from_second.executions) == _ids(started[:0:-1])
    before_third = await wf.ListExecutions(_between(workflow_id, None, times[2]))
    assert _ids(before_third.executions) == _ids([started[1], started[0]])
    empty = await wf.ListExecutions(_between(workflow_id, times[2], times[2]))
    assert list(empty.executions) == []


async def test_the_window_combines_with_statuses_and_page_tokens(
    wf: Stub, clock: ManualClock
) -> None:
    workflow_id, started = await _five_a_minute_apart(wf, clock)
    await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=started[2].id))
    times = [e.start_time for e in started]
    running = [pb.EXECUTION_STATUS_RUNNING]
    request = _between(workflow_id, times[1], times[4], statuses=running, page_size=1)
    pages: list[str] = []
    while True:
        reply = await wf.ListExecutions(request)
        pages.append(",".join(_ids(reply.executions)))
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert pages == [started[3].id, started[1].id]
    # A token is for the window it was made with.
    first = await wf.ListExecutions(_between(workflow_id, times[0], times[4], page_size=1))
    moved = _between(workflow_id, times[1], times[4], page_size=1)
    moved.page_token = first.next_page_token
    error = await rpc_error(wf.ListExecutions(moved))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]


async def test_a_window_that_ends_before_it_starts_is_refused(wf: Stub, clock: ManualClock) -> None:
    workflow_id, started = await _five_a_minute_apart(wf, clock)
    error = await rpc_error(
        wf.ListExecutions(_between(workflow_id, started[3].start_time, started[1].start_time))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["started_before"]


async def test_a_workflows_versions_newest_first_in_pages(wf: Stub) -> None:
    workflow = await deploy(wf, _waiting())
    versions = [workflow.version]
    for name in ("again", "once_more"):
        changed = doc.linear(doc.start(), doc.receive(name, "go"), doc.end())
        reply = await wf.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=pb.Workflow(id=workflow.id, bpmn_xml=changed),
                update_mask=field_mask_pb2.FieldMask(paths=["bpmn_xml"]),
            )
        )
        versions.append(reply.workflow.version)
    assert len(set(versions)) == 3
    request = pb.ListWorkflowVersionsRequest(workflow_id=workflow.id, page_size=2)
    listed: list[pb.WorkflowVersion] = []
    while True:
        page = await wf.ListWorkflowVersions(request)
        listed += page.versions
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [v.version for v in listed] == versions[::-1]
    for version in listed:
        shown = await wf.GetWorkflow(
            pb.GetWorkflowRequest(workflow_id=workflow.id, version=version.version)
        )
        assert shown.workflow.version == version.version


async def test_versions_of_no_workflow_are_not_found_and_the_id_is_checked(wf: Stub) -> None:
    missing = await rpc_error(
        wf.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(workflow_id=str(uuid.uuid4())))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    malformed = await rpc_error(
        wf.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(workflow_id="seven"))
    )
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(malformed) == ["workflow_id"]
