"""ListExecutionWaits: the timers, message and signal subscriptions, jobs and
open user tasks an execution waits on now, as the engine keeps them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.config import PAGE_TOKEN_SECRET
from runtime.pagination import PageTokens
from tests.support import rpc_error, violated_fields
from tests.workflows import bpmn_docs as doc
from tests.workflows.bpmn_esp_docs import document, esp, on_message
from tests.workflows.conftest import (
    Stub,
    deploy,
    incident_of,
    jobs,
    publish,
    start,
    until_status,
    until_waiting_at,
)
from tests.workflows.test_user_tasks import user_task


async def _waits(wf: Stub, execution_id: str) -> list[pb.ExecutionWait]:
    """Every wait of the execution: one page."""
    reply = await wf.ListExecutionWaits(pb.ListExecutionWaitsRequest(execution_id=execution_id))
    assert reply.next_page_token == ""
    return list(reply.waits)


def _when(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _receive_with_boundary_timer(name: str) -> str:
    """A receive task with an interrupting one-hour timer, beside a
    non-interrupting event sub-process started by the message `name`-nudge."""
    return document(
        doc.start(),
        doc.receive("wait", name),
        doc.boundary("late", "wait", duration="PT1H"),
        doc.end(),
        doc.end("timed_out"),
        *doc.chain("start", "wait", "end"),
        doc.flow("f_late", "late", "timed_out"),
        esp("nudged", on_message(f"{name}-nudge"), doc.end("nudged_end"), interrupting=False),
        doc.flow("f_nudged", "nudged_start", "nudged_end"),
    )


async def test_a_receive_task_with_a_boundary_timer_shows_both_until_it_completes(
    wf: Stub, clock: ManualClock
) -> None:
    name = f"go-{uuid.uuid4().hex[:8]}"
    workflow = await deploy(wf, _receive_with_boundary_timer(name))
    user = str(uuid.uuid4())
    started_at = clock.now()
    execution = await start(wf, workflow, user)
    await until_waiting_at(wf, execution.id, "wait", "nudged_start")

    found = {(w.element_id, w.WhichOneof("wait")): w for w in await _waits(wf, execution.id)}
    assert set(found) == {
        ("late", "timer"),
        ("wait", "message"),
        ("nudged_start", "message"),
    }
    timer = found[("late", "timer")].timer
    assert timer.kind == pb.EVENT_WAIT_KIND_BOUNDARY
    assert timer.interrupting
    assert _when(timer.due_time) == started_at + timedelta(hours=1)
    receive = found[("wait", "message")].message
    assert (receive.kind, receive.message_name, receive.correlation_key) == (
        pb.EVENT_WAIT_KIND_RECEIVE_TASK,
        name,
        user,
    )
    assert not receive.interrupting
    assert _when(receive.create_time) == started_at
    listener = found[("nudged_start", "message")].message
    assert (listener.kind, listener.message_name, listener.interrupting) == (
        pb.EVENT_WAIT_KIND_EVENT_SUBPROCESS,
        f"{name}-nudge",
        False,
    )

    await publish(wf, name, user)
    await until_status(wf, execution.id, pb.EXECUTION_STATUS_COMPLETED)
    assert await _waits(wf, execution.id) == []


async def test_a_job_shows_its_lock_then_its_retries_backoff_and_error(
    wf: Stub, clock: ManualClock
) -> None:
    job_type = f"waits-{uuid.uuid4().hex[:8]}"
    workflow = await deploy(
        wf, doc.linear(doc.start(), doc.service("work", job_type, retries=3), doc.end())
    )
    execution = await start(wf, workflow)
    (ready,) = await _waits(wf, execution.id)
    assert ready.element_id == "work"
    assert (ready.job.job_type, ready.job.state, ready.job.retries, ready.job.failures) == (
        job_type,
        pb.JOB_STATE_READY,
        3,
        0,
    )
    assert not ready.job.HasField("next_attempt_time")
    assert not ready.job.HasField("lock_expire_time")

    (job,) = await jobs(wf, job_type, wait=0)
    (locked,) = await _waits(wf, execution.id)
    assert locked.job.job_key == job.job_key
    assert (locked.job.state, locked.job.worker) == (pb.JOB_STATE_ACTIVATED, "test")
    assert _when(locked.job.lock_expire_time) == _when(job.deadline)

    failed_at = clock.now()
    await wf.FailJob(
        pb.FailJobRequest(
            job_key=job.job_key,
            retries=2,
            error_message="<b>down</b>",
            retry_backoff=duration_pb2.Duration(seconds=30),
        )
    )
    (backing_off,) = await _waits(wf, execution.id)
    assert (
        backing_off.job.state,
        backing_off.job.retries,
        backing_off.job.failures,
        backing_off.job.worker,
        backing_off.job.error_message,
    ) == (pb.JOB_STATE_READY, 2, 1, "", "<b>down</b>")
    assert _when(backing_off.job.next_attempt_time) == failed_at + timedelta(seconds=30)
    assert not backing_off.job.HasField("lock_expire_time")


async def test_a_job_out_of_retries_waits_failed_with_its_incident(wf: Stub) -> None:
    job_type = f"waits-{uuid.uuid4().hex[:8]}"
    workflow = await deploy(
        wf, doc.linear(doc.start(), doc.service("work", job_type, retries=1), doc.end())
    )
    execution = await start(wf, workflow)
    (job,) = await jobs(wf, job_type, wait=0)
    await wf.FailJob(pb.FailJobRequest(job_key=job.job_key, retries=0, error_message="gone"))
    await incident_of(wf, execution.id)
    (failed,) = await _waits(wf, execution.id)
    assert (failed.job.state, failed.job.retries, failed.job.error_message) == (
        pb.JOB_STATE_FAILED,
        0,
        "gone",
    )


def _user_task_and_events(signal: str) -> str:
    """A parallel split into an assigned user task, a signal catch and a timer catch."""
    return doc.with_signal(
        doc.definitions(
            doc.start(),
            doc.parallel("split"),
            user_task("review", assignee="ada"),
            doc.signal_event("intermediateCatchEvent", "signalled"),
            doc.catch("later", duration="P1D"),
            doc.end("e1"),
            doc.end("e2"),
            doc.end("e3"),
            doc.flow("f0", "start", "split"),
            *[
                doc.flow(f"s{n}", "split", target)
                for n, target in enumerate(("review", "signalled", "later"))
            ],
            doc.flow("d1", "review", "e1"),
            doc.flow("d2", "signalled", "e2"),
            doc.flow("d3", "later", "e3"),
        ),
        signal,
    )


async def test_user_tasks_signals_and_intermediate_timers_are_listed_in_pages(
    wf: Stub, clock: ManualClock
) -> None:
    signal = f"sig-{uuid.uuid4().hex[:8]}"
    workflow = await deploy(wf, _user_task_and_events(signal))
    started_at = clock.now()
    execution = await start(wf, workflow)
    await until_waiting_at(wf, execution.id, "later", "review", "signalled")

    every = await _waits(wf, execution.id)
    by_kind = {w.WhichOneof("wait"): w for w in every}
    assert set(by_kind) == {"user_task", "signal", "timer"}
    task = by_kind["user_task"]
    assert (task.element_id, task.user_task.state, task.user_task.assignee) == (
        "review",
        pb.USER_TASK_STATE_ASSIGNED,
        "ada",
    )
    caught = by_kind["signal"]
    assert (caught.element_id, caught.signal.kind, caught.signal.signal_name) == (
        "signalled",
        pb.EVENT_WAIT_KIND_INTERMEDIATE,
        signal,
    )
    assert _when(caught.signal.create_time) == started_at
    later = by_kind["timer"]
    assert (later.element_id, later.timer.kind, later.timer.interrupting) == (
        "later",
        pb.EVENT_WAIT_KIND_INTERMEDIATE,
        False,
    )
    assert _when(later.timer.due_time) == started_at + timedelta(days=1)

    paged: list[pb.ExecutionWait] = []
    token = ""
    for _ in range(len(every)):
        reply = await wf.ListExecutionWaits(
            pb.ListExecutionWaitsRequest(execution_id=execution.id, page_size=1, page_token=token)
        )
        paged += reply.waits
        token = reply.next_page_token
        if not token:
            break
    assert paged == every

    other = await start(wf, workflow)
    first = await wf.ListExecutionWaits(
        pb.ListExecutionWaitsRequest(execution_id=execution.id, page_size=1)
    )
    error = await rpc_error(
        wf.ListExecutionWaits(
            pb.ListExecutionWaitsRequest(
                execution_id=other.id, page_size=1, page_token=first.next_page_token
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]


async def test_bad_requests_name_their_field_and_an_unknown_execution_is_not_found(
    wf: Stub,
) -> None:
    for execution_id in ("", "not-a-uuid"):
        error = await rpc_error(
            wf.ListExecutionWaits(pb.ListExecutionWaitsRequest(execution_id=execution_id))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["execution_id"]
    error = await rpc_error(
        wf.ListExecutionWaits(
            pb.ListExecutionWaitsRequest(execution_id=str(uuid.uuid4()), page_size=-1)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_size"]
    error = await rpc_error(
        wf.ListExecutionWaits(pb.ListExecutionWaitsRequest(execution_id=str(uuid.uuid4())))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_execution_waiting_to_start_shows_its_start_timer(
    wf: Stub, clock: ManualClock
) -> None:
    workflow = await deploy(wf, doc.linear(doc.start(duration="PT2H"), doc.end()))
    started_at = clock.now()
    execution = await start(wf, workflow)
    assert execution.status == pb.EXECUTION_STATUS_PENDING
    (timer,) = await _waits(wf, execution.id)
    assert (timer.element_id, timer.timer.kind, timer.timer.interrupting) == (
        "start",
        pb.EVENT_WAIT_KIND_START,
        False,
    )
    assert _when(timer.timer.due_time) == started_at + timedelta(hours=2)


@pytest.mark.parametrize("cursor", [[1, 0], ["1", 0, "x"], [2**40, 0, "x"], [1, -1, "x"]])
async def test_a_forged_page_token_with_a_malformed_cursor_is_invalid_argument(
    wf: Stub, wf_env: dict[str, str], cursor: list[Any]
) -> None:
    workflow = await deploy(wf, doc.linear(doc.start(duration="PT2H"), doc.end()))
    execution = await start(wf, workflow)
    # Made with the services' secret: what a leaked secret or an older release gives.
    token = PageTokens(wf_env[PAGE_TOKEN_SECRET]).encode(cursor, [execution.id])
    error = await rpc_error(
        wf.ListExecutionWaits(
            pb.ListExecutionWaitsRequest(execution_id=execution.id, page_token=token)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]
    assert "malformed" in (error.details() or "")
