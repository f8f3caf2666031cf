"""Jobs: the work of service tasks. External workers activate jobs under a
lease and complete them, fail them (retried after a backoff while retries are
left, else an incident) or throw a BPMN error; the built-in tasks that call
the users service are done the same way by the service's own worker
(workers.py); resolving an incident runs its job, or its element, again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

import asyncpg

from runtime.database import UnitOfWork
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.workflows.domain import (
    ENDED_STATUSES,
    SET_STAGE,
    USERS_JOB_TYPES,
    JobOutcome,
    JobRecord,
    parse_job_key,
    retries_after_failure,
    retry_at,
)
from services.workflows.peers import Users
from services.workflows.state import (
    ErrorThrown,
    ExecutionState,
    JobCompleted,
    Reactivate,
    Trigger,
)
from services.workflows.step_rows import Notes
from services.workflows.stepper import CONNECTION_ERRORS, Stepper, by_engine
from services.workflows.store import executions as execution_store
from services.workflows.store import incidents as incident_store
from services.workflows.store import jobs as store
from services.workflows.store.locks import lock_users

log = logging.getLogger(__name__)

# The worker name built-in jobs are activated under.
BUILTIN_WORKER = "builtin"


async def record_failure(
    conn: asyncpg.Connection,
    job: JobRecord,
    *,
    retries: int,
    message: str,
    retry_backoff: timedelta | None,
    now: datetime,
) -> None:
    """A failed attempt: retried after a backoff while retries are left, else an incident."""
    available_at = retry_at(job.failures, retries, retry_backoff, now)
    if available_at is not None:
        await store.retry_job(
            conn,
            job.execution_id,
            job.token,
            retries=retries,
            available_at=available_at,
            error=message,
        )
    else:
        await store.fail_job(conn, job.execution_id, job.token, message or "the job failed", now)


class Jobs:
    """The job API of external workers, and incidents."""

    def __init__(self, stepper: Stepper) -> None:
        self._stepper = stepper

    async def activate(
        self, job_type: str, worker: str, limit: int, lease: timedelta
    ) -> list[JobRecord]:
        """Up to `limit` available jobs of the type, leased to `worker` for `lease`."""
        stepper = self._stepper

        async def work(uow: UnitOfWork, notes: Notes) -> list[JobRecord]:
            now = stepper.clock.now()
            return await store.activate_jobs(
                uow.conn, [job_type], worker, limit=limit, now=now, deadline=now + lease
            )

        return await stepper.transaction(work)

    async def wait(self, job_type: str, seconds: float) -> None:
        """Until jobs of the type are created, or `seconds` passed (a long poll's wait)."""
        await self._stepper.wait_for_jobs(job_type, seconds)

    async def _activated_job(self, uow: UnitOfWork, key: str) -> tuple[ExecutionState, JobRecord]:
        parsed = parse_job_key(key)
        if parsed is None:
            raise InvalidArgument.field("job_key", "is not a job key")
        states = await execution_store.lock_executions(uow.conn, [parsed.execution_id])
        job = await store.get_job(uow.conn, parsed.execution_id, parsed.token)
        if parsed.execution_id not in states or job is None:
            raise NotFound(f"job {key} does not exist (done or cancelled?)", reason="JOB_NOT_FOUND")
        if job.state != "activated":
            raise FailedPrecondition(
                f"job {key} is {job.state}, not activated", reason="JOB_NOT_ACTIVATED"
            )
        return states[parsed.execution_id], job

    async def complete(self, key: str, variables: dict[str, Any]) -> None:
        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state, job = await self._activated_job(uow, key)
            trigger = JobCompleted(job.token, variables)
            await self._stepper.advance_request(uow, notes, {state.id: [trigger]})

        await self._stepper.transaction(work)

    async def fail(
        self, key: str, retries: int, message: str, retry_backoff: timedelta | None
    ) -> None:
        stepper = self._stepper

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            _, job = await self._activated_job(uow, key)
            await record_failure(
                uow.conn,
                job,
                retries=retries,
                message=message,
                retry_backoff=retry_backoff,
                now=stepper.clock.now(),
            )

        await stepper.transaction(work)

    async def throw_error(
        self, key: str, code: str, message: str, variables: dict[str, Any]
    ) -> None:
        """A BPMN error: a boundary event that catches it moves on; else the job's incident."""
        stepper = self._stepper

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state, job = await self._activated_job(uow, key)
            trigger = ErrorThrown(job.token, code, message, variables)
            advanced = await stepper.advance_request(uow, notes, {state.id: [trigger]})
            for token, error in advanced.uncaught.get(state.id, []):
                await store.fail_job(uow.conn, state.id, token, error, stepper.clock.now())

        await stepper.transaction(work)

    async def resolve_incident(self, incident_id: uuid.UUID) -> None:
        """A job's incident makes the job ready again with its task's retries;
        another incident runs its element again."""
        stepper = self._stepper

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            incident = await incident_store.get_incident(uow.conn, incident_id)
            if incident is None:
                raise NotFound(
                    f"incident {incident_id} does not exist", reason="INCIDENT_NOT_FOUND"
                )
            state = await stepper.locked(uow.conn, incident.execution_id)
            if incident.resolved_at is not None or state.status in ENDED_STATUSES:
                raise FailedPrecondition(
                    "the incident is resolved, or its execution ended", reason="INCIDENT_CLOSED"
                )
            graph = await stepper.graph_of(uow.conn, state)
            task = graph.nodes[incident.element_id].task
            await incident_store.resolve_incident(
                uow.conn, incident, task.retries if task else 1, stepper.clock.now()
            )
            if incident.from_job:
                notes.job_types.add(task.type if task else "")
            elif incident.token in state.tokens:
                await stepper.advance(uow, notes, {state.id: [Reactivate(incident.token)]})

        await stepper.transaction(work)


class Done(NamedTuple):
    """A built-in job and what became of its call."""

    job: JobRecord
    outcome: JobOutcome


class BuiltinJobs:
    """The built-in service tasks that call the users service (set a stage,
    update attributes), with the machinery external workers use: a lease,
    retries with exponential backoff, an incident when retries run out."""

    types = USERS_JOB_TYPES

    def __init__(self, stepper: Stepper, users: Users, lease: timedelta) -> None:
        self._stepper = stepper
        self._users = users
        self._lease = lease

    def on_new(self, listener: Callable[[], None]) -> None:
        """`listener` runs after each commit that created built-in jobs."""
        self._stepper.on_jobs(self.types, listener)

    async def work_once(self, limit: int) -> int:
        """Claims up to `limit` due jobs, calls the users service for each and
        records the outcomes; returns how many it claimed."""
        stepper = self._stepper

        async def claim(uow: UnitOfWork, notes: Notes) -> list[JobRecord]:
            now = stepper.clock.now()
            return await store.activate_jobs(
                uow.conn,
                self.types,
                BUILTIN_WORKER,
                limit=limit,
                now=now,
                deadline=now + self._lease,
            )

        jobs = await stepper.transaction(claim)
        if not jobs:
            return 0
        outcomes = await asyncio.gather(*(self._call(job) for job in jobs))
        done = [Done(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)]
        try:
            await stepper.transaction(partial(self._finish, done))
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("finishing %d built-in jobs failed; each is finished alone", len(done))
            for one in done:
                await stepper.transaction(partial(self._finish_alone, one))
        return len(jobs)

    async def _call(self, job: JobRecord) -> JobOutcome:
        """The call is made on behalf of whoever started the execution."""
        try:
            if job.job_type == SET_STAGE:
                return await self._users.set_stage(job)
            return await self._users.update_attributes(job)
        except Exception as error:
            # A job the engine cannot even ask for (a stored graph it cannot
            # run, a bug): an incident on it, not the end of the worker.
            log.exception("the built-in job of execution %s failed", job.execution_id)
            return JobOutcome(f"the engine could not do the job: {type(error).__name__}: {error}")

    async def _finish(self, done: list[Done], uow: UnitOfWork, notes: Notes) -> None:
        stepper = self._stepper
        now = stepper.clock.now()
        # Before the rows of the jobs are locked, as every step does (store.locks).
        await lock_users(uow.conn, [one.job.user_id for one in done])
        completed: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        for job, outcome in done:
            if outcome.error is None:
                completed[job.execution_id].append(JobCompleted(job.token, {}))
                continue
            current = await store.get_job(uow.conn, job.execution_id, job.token, lock=True)
            if current is None or current.state != "activated":
                continue
            await record_failure(
                uow.conn,
                current,
                retries=retries_after_failure(current.retries, outcome.retryable),
                message=outcome.error,
                retry_backoff=None,
                now=now,
            )
        if completed:
            await stepper.advance(uow, notes, completed, attribute=by_engine)

    async def _finish_alone(self, one: Done, uow: UnitOfWork, notes: Notes) -> None:
        """A job whose finish fails gets an incident; ResolveIncident tries it again."""
        job = one.job

        async def incident(error: Exception) -> None:
            message = f"the engine could not finish the job: {type(error).__name__}: {error}"
            now = self._stepper.clock.now()
            await store.fail_job(uow.conn, job.execution_id, job.token, message, now)

        await self._stepper.contained(
            uow, job.execution_id, partial(self._finish, [one], uow, notes), incident
        )
