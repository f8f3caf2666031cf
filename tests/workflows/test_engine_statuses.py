"""How executions end other than by completing: each cause of `failed`, and
the ways to `cancelled`, with the row's columns and the lifecycle event."""

from __future__ import annotations

import uuid

import asyncpg

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.server import ServiceHost
from runtime.structs import struct_to_dict
from tests.workflows.bpmn_docs import catch, definitions, end, flow, linear, start, with_output, xor
from tests.workflows.conftest import Stub, deploy, events_of, execution, publish
from tests.workflows.conftest import start as start_execution

FAILED, CANCELLED = pb.EXECUTION_STATUS_FAILED, pb.EXECUTION_STATUS_CANCELLED


async def row_of(admin: asyncpg.Connection, execution_id: str) -> asyncpg.Record:
    row = await admin.fetchrow(
        "SELECT status, current_node_id, completed_at, error_message"
        " FROM workflows.workflow_executions WHERE id = $1",
        uuid.UUID(execution_id),
    )
    assert row is not None
    return row


async def ended_with(host: ServiceHost, execution_id: str, event_type: str) -> dict[str, object]:
    """The data of the execution's last lifecycle event, which must be `event_type`."""
    events = await events_of(host, execution_id)
    assert events[-1].event_type == event_type, [e.event_type for e in events]
    return struct_to_dict(events[-1].data)


async def test_an_output_mapping_that_fails_fails_the_execution_where_it_is(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    name = f"priced_{uuid.uuid4().hex[:8]}"
    bpmn = linear(start(), with_output(catch("priced", message=name), "total", "=price * 2"), end())
    running = await start_execution(wf, await deploy(wf, bpmn))
    reply = await publish(wf, name, running.user_id, price="free")
    assert reply.delivered_count == 1

    failed = await execution(wf, running.id)
    assert failed.status == FAILED and failed.completion_time.seconds > 0
    assert failed.error_message.startswith("output 'total' of 'priced':")
    row = await row_of(admin, running.id)
    assert (row["status"], row["current_node_id"]) == ("failed", "priced")
    assert row["completed_at"] is not None and row["error_message"] == failed.error_message
    data = await ended_with(wf_host, running.id, "execution.failed")
    assert data["error_message"] == failed.error_message


async def test_a_loop_with_no_wait_state_fails_at_the_step_guard(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    bpmn = definitions(
        start(),
        xor("spin", default="out"),
        end(),
        flow("in", "start", "spin"),
        flow("again", "spin", "spin", "true"),
        flow("out", "spin", "end"),
    )
    failed = await start_execution(wf, await deploy(wf, bpmn))
    assert failed.status == FAILED
    assert "without reaching a wait state (a loop with no wait state?)" in failed.error_message
    row = await row_of(admin, failed.id)
    assert (row["status"], row["current_node_id"]) == ("failed", "spin")
    assert row["completed_at"] is not None
    await ended_with(wf_host, failed.id, "execution.failed")


async def test_cancel_and_a_forced_delete_end_executions_as_cancelled(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    cancelled = await start_execution(wf, workflow)
    deleted = await start_execution(wf, workflow)

    reply = await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=cancelled.id))
    assert reply.execution.status == CANCELLED and reply.execution.completion_time.seconds > 0
    row = await row_of(admin, cancelled.id)
    assert (row["status"], row["current_node_id"]) == ("cancelled", "wait")
    assert row["error_message"] == "cancelled through the API"
    data = await ended_with(wf_host, cancelled.id, "execution.cancelled")
    assert data["error_message"] == "cancelled through the API"

    await wf.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id=workflow.id, force=True))
    data = await ended_with(wf_host, deleted.id, "execution.cancelled")
    assert data["error_message"] == "the workflow was deleted"
