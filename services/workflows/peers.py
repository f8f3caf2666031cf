"""The workflows service's calls to the users service: the profile that
expressions read (`user`), and the built-in tasks that move a user's stage and
set their attributes. A task's call is made on behalf of whoever started the
execution, in the trace of the step that created the job."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from clients.users import UsersClient, UsersRefused
from runtime.errors import Unavailable
from runtime.identity import acting_for, calling_as
from runtime.telemetry import joined
from services.workflows.domain import DONE, PRODUCER, JobOutcome, JobRecord, Profile

# Idempotency keys of the users calls a job makes: one per job (execution, token).
REQUEST_NAMESPACE = uuid.UUID("8d3c1f55-3c3e-4d0f-9a51-6f1d2f7b9e21")
# Answers that retrying the same call cannot change.
PERMANENT = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)

# Reads a user's profile for expressions (`user`); None once the user is erased.
ProfileReader = Callable[[uuid.UUID], Awaitable[Profile]]


class Users(Protocol):
    """What the workflows service asks of the users service. The stepper reads
    profiles; the built-in jobs move stages and set attributes, each call's
    outcome a JobOutcome (done, or the error and whether a retry may help)."""

    async def profile(self, user_id: uuid.UUID) -> Profile: ...

    async def set_stage(self, job: JobRecord) -> JobOutcome: ...

    async def update_attributes(self, job: JobRecord) -> JobOutcome: ...


class UsersPeer:
    """`Users` over the users service's client (GetUser, TransitionStage, UpdateUser)."""

    def __init__(self, users: UsersClient) -> None:
        self._users = users

    async def profile(self, user_id: uuid.UUID) -> Profile:
        """The user's stage and attributes; None when there is no such user."""
        user = await self._users.user(user_id)
        return None if user is None else user.as_variables()

    async def set_stage(self, job: JobRecord) -> JobOutcome:
        """TransitionStage as a set_stage job asks; the user already in the stage is done."""
        return await self._for_job(
            job,
            lambda: self._users.transition_stage(
                job.user_id,
                job.headers["stage"],
                request_id=uuid.uuid5(REQUEST_NAMESPACE, f"{job.execution_id}/{job.token}"),
                execution_id=job.execution_id,
                metadata={"workflow_id": str(job.workflow_id), "element_id": job.element_id},
            ),
        )

    async def update_attributes(self, job: JobRecord) -> JobOutcome:
        """UpdateUser with the attributes an update_attributes job computed (a merge patch)."""
        return await self._for_job(
            job, lambda: self._users.merge_attributes(job.user_id, job.headers["attributes"])
        )

    async def _for_job(self, job: JobRecord, call: Callable[[], Awaitable[None]]) -> JobOutcome:
        try:
            with joined(job.traceparent), calling_as(acting_for(PRODUCER, job.actors)):
                await call()
        except UsersRefused as refusal:
            return job_outcome(refusal)
        except Unavailable as error:
            return JobOutcome(str(error), retryable=True)
        return DONE


def job_outcome(refusal: UsersRefused) -> JobOutcome:
    """What the users service's refusal of a job's call makes of the job."""
    if refusal.code == grpc.StatusCode.FAILED_PRECONDITION and refusal.reason == "SAME_STAGE":
        return DONE  # the user is where the workflow wants them
    return JobOutcome(str(refusal), refusal.code not in PERMANENT)
