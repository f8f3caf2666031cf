"""The ListExecutionWaits RPC of the workflows service (part of
WorkflowServicer): validate, call the use case (waits.py), map back."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.pagination import PageTokens
from runtime.parsing import required_id
from runtime.structs import timestamp
from services.workflows.domain import job_key
from services.workflows.servicer_user_tasks import user_task_message
from services.workflows.store.waits import (
    Detail,
    JobRow,
    MessageRow,
    SignalRow,
    TimerRow,
    WaitCursor,
)
from services.workflows.user_task_rules import UserTaskRecord
from services.workflows.waits import (
    BOUNDARY,
    EVENT_SUBPROCESS,
    INTERMEDIATE,
    RECEIVE_TASK,
    START,
    EventPlace,
    ExecutionWaits,
    Wait,
)

Context = grpc.aio.ServicerContext[Any, Any]

_EVENT_KINDS = {
    INTERMEDIATE: pb.EVENT_WAIT_KIND_INTERMEDIATE,
    BOUNDARY: pb.EVENT_WAIT_KIND_BOUNDARY,
    EVENT_SUBPROCESS: pb.EVENT_WAIT_KIND_EVENT_SUBPROCESS,
    RECEIVE_TASK: pb.EVENT_WAIT_KIND_RECEIVE_TASK,
    START: pb.EVENT_WAIT_KIND_START,
}
_JOB_STATES = {
    "ready": pb.JOB_STATE_READY,
    "activated": pb.JOB_STATE_ACTIVATED,
    "failed": pb.JOB_STATE_FAILED,
}


def _cursor(values: list[Any]) -> WaitCursor:
    token, kind, element = values
    if not (isinstance(token, int) and isinstance(kind, int) and isinstance(element, str)):
        raise ValueError("a wait's cursor is a token, a kind and an element")
    if not (0 <= token < 2**31 and 0 <= kind < 2**31):
        raise ValueError("a wait's token and kind are integers of the database")
    return WaitCursor(token, kind, element)


def _job(execution_id: uuid.UUID, token: int, job: JobRow) -> pb.JobWait:
    message = pb.JobWait(
        job_key=job_key(execution_id, token),
        job_type=job.job_type,
        state=_JOB_STATES[job.state],
        retries=job.retries,
        failures=job.failures,
        worker=job.worker or "",
        error_message=job.error_message or "",
    )
    if job.state == "activated":
        message.lock_expire_time.CopyFrom(timestamp(job.available_at))
    elif job.state == "ready" and job.failures:
        message.next_attempt_time.CopyFrom(timestamp(job.available_at))
    return message


def _event(message: pb.ExecutionWait, detail: Detail, place: EventPlace) -> None:
    """Sets the timer, message or signal `detail` on `message`, placed in its workflow."""
    kind, interrupting = _EVENT_KINDS[place.kind], place.interrupting
    if isinstance(detail, TimerRow):
        message.timer.CopyFrom(
            pb.TimerWait(kind=kind, due_time=timestamp(detail.due_at), interrupting=interrupting)
        )
    elif isinstance(detail, MessageRow):
        message.message.CopyFrom(
            pb.MessageWait(
                kind=kind,
                message_name=detail.message_name,
                correlation_key=detail.correlation_key,
                interrupting=interrupting,
            )
        )
        if detail.created_at is not None:
            message.message.create_time.CopyFrom(timestamp(detail.created_at))
    elif isinstance(detail, SignalRow):
        message.signal.CopyFrom(
            pb.SignalWait(kind=kind, signal_name=detail.signal_name, interrupting=interrupting)
        )
        if detail.created_at is not None:
            message.signal.create_time.CopyFrom(timestamp(detail.created_at))


def wait_message(execution_id: uuid.UUID, wait: Wait) -> pb.ExecutionWait:
    row = wait.row
    message = pb.ExecutionWait(element_id=row.element_id)
    if wait.place is not None:
        _event(message, row.detail, wait.place)
    elif isinstance(row.detail, JobRow):
        message.job.CopyFrom(_job(execution_id, row.token, row.detail))
    elif isinstance(row.detail, UserTaskRecord):
        message.user_task.CopyFrom(user_task_message(row.detail))
    return message


class WaitRpcs:
    """ListExecutionWaits."""

    _waits: ExecutionWaits
    _tokens: PageTokens

    async def ListExecutionWaits(
        self, request: pb.ListExecutionWaitsRequest, context: Context
    ) -> pb.ListExecutionWaitsResponse:
        execution_id = required_id(request.execution_id, "execution_id")
        found, token = await self._tokens.read_page(
            request,
            [str(execution_id)],
            lambda cursor, limit: self._waits.page(execution_id, cursor, limit),
            lambda wait: list(wait.row.cursor),
            _cursor,
        )
        return pb.ListExecutionWaitsResponse(
            waits=[wait_message(execution_id, w) for w in found], next_page_token=token
        )
