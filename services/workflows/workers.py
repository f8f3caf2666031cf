"""Background workers of the workflows service.

TimerWorker fires due timers: it claims them with FOR UPDATE SKIP LOCKED and
deletes each in the transaction of the step it causes, so a timer fires once
however many replicas run, and one that came due while no replica ran fires
at the next start. BuiltinJobWorker does the built-in service tasks that call
the users service, with the job machinery external workers use: a lease,
retries with exponential backoff, an incident when retries run out.

Neither stops on one bad execution (a bug, a stored graph it cannot run): a
batch that fails is done again one execution at a time, and the execution that
fails alone is logged and set aside (its timers postponed, its job given an
incident) while the worker goes on with the others.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.database import UnitOfWork
from runtime.errors import Unavailable
from runtime.identity import acting_for, calling_as
from runtime.stages import stage_value
from runtime.structs import dict_to_struct
from runtime.telemetry import joined
from services.workflows import store
from services.workflows.bpmn import SET_STAGE, UPDATE_ATTRIBUTES
from services.workflows.engine import JobCompleted, TimerFired, Trigger
from services.workflows.handlers import (
    PRODUCER,
    Advance,
    Engine,
    Notes,
    by_engine,
    record_failure,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Idempotency keys of the users calls a job makes: one per job (execution, token).
REQUEST_NAMESPACE = uuid.UUID("8d3c1f55-3c3e-4d0f-9a51-6f1d2f7b9e21")
PROFILE_RETRY = timedelta(seconds=5)
BUSY_PAUSE_SECONDS = 0.05
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The connection failed, not the work: never put down to one execution.
CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
# The timers of an execution whose step failed alone are tried again after this.
SET_ASIDE = timedelta(minutes=1)
# A built-in job's outcome: None when done, else the error and whether a retry may help.
Outcome = tuple[str | None, bool]


async def _pause(wake: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.create_task(wake.wait()), asyncio.create_task(stopping.wait())]
    await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    wake.clear()


async def _contained(
    uow: UnitOfWork,
    execution_id: uuid.UUID,
    step: Callable[[], Awaitable[T]],
    set_aside: Callable[[Exception], Awaitable[None]],
) -> T | None:
    """One execution's step in a savepoint. An error that is not the database's
    undoes the step (its outbox messages too) and is logged with the execution;
    `set_aside` then records what becomes of the work, and None is returned."""
    published = len(uow.messages)
    try:
        async with uow.conn.transaction():
            return await step()
    except (*CONNECTION_ERRORS, asyncpg.TransactionRollbackError):
        raise
    except Exception as error:
        log.exception("the step of execution %s failed; it is set aside", execution_id)
        del uow.messages[published:]
        await set_aside(error)
        return None


class TimerWorker:
    name = "workflow-timers"

    def __init__(self, engine: Engine, batch: int, poll_seconds: float) -> None:
        self._engine = engine
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._next_wake: datetime | None = None
        engine.timer_listeners.append(self._timer_added)
        engine.clock.on_change(self._wake.set)

    def _timer_added(self, due: datetime) -> None:
        if self._next_wake is None or due < self._next_wake:
            self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                pause = await self._round()
            except DATABASE_ERRORS as error:
                log.warning("timer worker could not reach the database: %s", error)
                pause = self._poll
            if pause is not None:
                await _pause(self._wake, stopping, pause)

    async def _round(self) -> float | None:
        """Fires what is due; the seconds to wait before the next round, or None
        to go on at once. The database may fail anywhere in it, the wait included."""
        claimed, fired = await self.fire_due()
        if claimed >= self._batch and fired:
            return None
        if claimed and not fired:
            # Every due timer's execution is locked by another step for now.
            return BUSY_PAUSE_SECONDS
        return await self._seconds_to_next()

    async def _seconds_to_next(self) -> float:
        due = await store.next_due(self._engine.context.pool)
        now = self._engine.clock.now()
        self._next_wake = due if due is not None else now + timedelta(seconds=self._poll)
        seconds = (self._next_wake - now).total_seconds()
        return min(self._poll, seconds)

    async def fire_due(self) -> tuple[int, int]:
        """One round: (timers claimed, timers fired)."""
        engine = self._engine
        claimed: list[store.DueTimer] = []
        try:
            return await engine.transaction(partial(self._fire, claimed, None))
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("a round of %d timers failed; each execution fires alone", len(claimed))
        rounds = [
            await engine.transaction(partial(self._fire, [], execution_id))
            for execution_id in dict.fromkeys(timer.execution_id for timer in claimed)
        ]
        return sum(r[0] for r in rounds), sum(r[1] for r in rounds)

    async def _fire(
        self,
        claimed: list[store.DueTimer],
        alone: uuid.UUID | None,
        uow: UnitOfWork,
        notes: Notes,
    ) -> tuple[int, int]:
        """Fires the due timers (of one execution, `alone`, in a savepoint); the
        timers it claimed go into `claimed`."""
        engine = self._engine
        now = engine.clock.now()
        claimed[:] = timers = await store.claim_due_timers(uow.conn, now, self._batch, alone)
        if not timers:
            return 0, 0
        triggers: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        for timer in timers:
            triggers[timer.execution_id].append(
                TimerFired(timer.token, timer.element_id, timer.repeat)
            )

        def step() -> Awaitable[Advance]:
            return engine.advance(
                uow,
                notes,
                triggers,
                skip_locked=True,
                skip_unreadable_profiles=True,
                attribute=by_engine,
            )

        async def postpone(_: Exception) -> None:
            await store.postpone_timers(uow.conn, timers, now + SET_ASIDE)

        advanced = await step() if alone is None else await _contained(uow, alone, step, postpone)
        if advanced is None:
            return len(timers), 0
        # Skipped with their state loaded: the user's profile could not be read.
        unreadable = {i for i in advanced.skipped if i in advanced.states}
        postponed = [t for t in timers if t.execution_id in unreadable]
        if postponed:
            await store.postpone_timers(uow.conn, postponed, now + PROFILE_RETRY)
        return len(timers), sum(1 for t in timers if t.execution_id in advanced.runs)


class BuiltinJobWorker:
    """Sets stages and updates attributes through the users service."""

    name = "workflow-builtin-jobs"
    TYPES = (SET_STAGE, UPDATE_ATTRIBUTES)

    def __init__(self, engine: Engine, batch: int, poll_seconds: float, lease: timedelta) -> None:
        self._engine = engine
        self._batch = batch
        self._poll = poll_seconds
        self._lease = lease

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                done = await self.work_once()
            except DATABASE_ERRORS as error:
                log.warning("built-in job worker could not reach the database: %s", error)
                done = 0
            if done >= self._batch:
                continue
            waits: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._engine.wait_for_jobs(t, self._poll)) for t in self.TYPES
            ]
            waits.append(asyncio.create_task(stopping.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    async def work_once(self) -> int:
        engine = self._engine

        async def claim(uow: UnitOfWork, notes: Notes) -> list[store.JobRecord]:
            now = engine.clock.now()
            return await store.activate_jobs(
                uow.conn,
                self.TYPES,
                "builtin",
                limit=self._batch,
                now=now,
                deadline=now + self._lease,
            )

        jobs = await engine.transaction(claim)
        if not jobs:
            return 0
        outcomes = await asyncio.gather(*(self._call(job) for job in jobs))
        done = list(zip(jobs, outcomes, strict=True))
        try:
            await engine.transaction(partial(self._finish, done))
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("finishing %d built-in jobs failed; each is finished alone", len(done))
            for one in done:
                await engine.transaction(partial(self._finish_alone, one))
        return len(jobs)

    async def _finish(
        self, done: list[tuple[store.JobRecord, Outcome]], uow: UnitOfWork, notes: Notes
    ) -> None:
        engine = self._engine
        now = engine.clock.now()
        # Before the rows of the jobs are locked, as every step does (store.lock_users).
        await store.lock_users(uow.conn, [job.user_id for job, _ in done])
        completed: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        for job, (error, retryable) in done:
            if error is None:
                completed[job.execution_id].append(JobCompleted(job.token, {}))
                continue
            current = await store.get_job(uow.conn, job.execution_id, job.token, lock=True)
            if current is None or current.state != "activated":
                continue
            retries = current.retries - 1 if retryable else 0
            await record_failure(
                uow.conn, current, retries=retries, message=error, retry_backoff=None, now=now
            )
        if completed:
            await engine.advance(uow, notes, completed, attribute=by_engine)

    async def _finish_alone(
        self, one: tuple[store.JobRecord, Outcome], uow: UnitOfWork, notes: Notes
    ) -> None:
        """A job whose finish fails gets an incident; ResolveIncident tries it again."""
        job = one[0]

        async def incident(error: Exception) -> None:
            message = f"the engine could not finish the job: {type(error).__name__}: {error}"
            now = self._engine.clock.now()
            await store.fail_job(uow.conn, job.execution_id, job.token, message, now)

        await _contained(uow, job.execution_id, partial(self._finish, [one], uow, notes), incident)

    async def _call(self, job: store.JobRecord) -> Outcome:
        """(None, _) when done; else (the error, whether a retry may help). The
        call is made on behalf of whoever started the execution."""
        stub = users_pb2_grpc.UserServiceStub(self._engine.context.clients.channel("users"))
        timeout = self._engine.context.clients.timeout()
        try:
            with joined(job.traceparent), calling_as(acting_for(PRODUCER, job.actors)):
                if job.job_type == SET_STAGE:
                    await stub.TransitionStage(self._transition(job), timeout=timeout)
                else:
                    await stub.UpdateUser(self._update(job), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return _outcome(error)
        except Unavailable as error:
            return str(error), True
        except Exception as error:
            # A job the engine cannot even ask for (a stored graph it cannot
            # run, a bug): an incident on it, not the end of the worker.
            log.exception("the built-in job of execution %s failed", job.execution_id)
            return f"the engine could not do the job: {type(error).__name__}: {error}", False
        return None, False

    @staticmethod
    def _transition(job: store.JobRecord) -> users_pb2.TransitionStageRequest:
        request_id = uuid.uuid5(REQUEST_NAMESPACE, f"{job.execution_id}/{job.token}")
        metadata: dict[str, Any] = {
            "workflow_id": str(job.workflow_id),
            "element_id": job.element_id,
        }
        return users_pb2.TransitionStageRequest(
            user_id=str(job.user_id),
            to_stage=stage_value(job.headers["stage"]),
            workflow_execution_id=str(job.execution_id),
            metadata=dict_to_struct(metadata),
            request_id=str(request_id),
        )

    @staticmethod
    def _update(job: store.JobRecord) -> users_pb2.UpdateUserRequest:
        request = users_pb2.UpdateUserRequest(
            user=users_pb2.User(
                id=str(job.user_id), attributes=dict_to_struct(job.headers["attributes"])
            )
        )
        request.update_mask.paths.append("attributes")
        return request


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _outcome(error: grpc.aio.AioRpcError) -> tuple[str | None, bool]:
    code = error.code()
    if code == grpc.StatusCode.FAILED_PRECONDITION and _reason(error) == "SAME_STAGE":
        return None, False  # the user is where the workflow wants them
    message = f"users service: {code.name}: {error.details()}"
    permanent = (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    return message, code not in permanent
