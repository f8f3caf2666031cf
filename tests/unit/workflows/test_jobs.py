"""Jobs without a database: what a failed attempt becomes (a retry after its
backoff, or an incident), the outcome of a built-in job's call to the users
service, and the rounds of the workers that do them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from clients.users import UsersRefused
from services.workflows.domain import (
    DONE,
    SET_STAGE,
    UPDATE_ATTRIBUTES,
    JobOutcome,
    JobRecord,
)
from services.workflows.jobs import BuiltinJobs, record_failure
from services.workflows.peers import job_outcome
from services.workflows.stepper import Stepper
from services.workflows.timers import DueTimers, Fired
from services.workflows.workers import BUSY_PAUSE_SECONDS, BuiltinJobWorker, TimerWorker

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)


def job(job_type: str = "work", *, failures: int = 0, retries: int = 3) -> JobRecord:
    return JobRecord(
        execution_id=uuid.uuid4(),
        token=3,
        job_type=job_type,
        element_id="task",
        workflow_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        headers={"stage": "activation"},
        retries=retries,
        failures=failures,
        state="activated",
        available_at=NOW,
        traceparent=None,
        variables={},
        actors=("alice",),
    )


class RecordingConnection:
    """Records the statements a use case runs."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append((sql, args))
        return "UPDATE 1"

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return "task"


async def failed(
    record: JobRecord, retries: int, backoff: timedelta | None = None
) -> RecordingConnection:
    conn = RecordingConnection()
    await record_failure(
        cast(asyncpg.Connection, conn),
        record,
        retries=retries,
        message="it broke",
        retry_backoff=backoff,
        now=NOW,
    )
    return conn


async def test_a_failure_with_retries_left_makes_the_job_ready_after_its_backoff() -> None:
    record = job(failures=2)
    conn = await failed(record, retries=2)
    ((sql, args),) = conn.statements
    assert sql.startswith("UPDATE jobs SET state = 'ready'")
    # The third failure in a row: 4 s.
    assert args == (record.execution_id, record.token, 2, NOW + timedelta(seconds=4), "it broke")


async def test_a_failure_keeps_the_backoff_the_worker_asked_for() -> None:
    record = job(failures=6)
    conn = await failed(record, retries=1, backoff=timedelta(seconds=30))
    ((_, args),) = conn.statements
    assert args[3] == NOW + timedelta(seconds=30)


async def test_a_failure_without_retries_left_is_an_incident() -> None:
    record = job(failures=2)
    conn = await failed(record, retries=0)
    sqls = [sql for sql, _ in conn.statements]
    assert sqls[0].startswith("UPDATE jobs SET state = 'failed'")
    assert sqls[-1].startswith("INSERT INTO incidents")
    assert conn.statements[-1][1] == (record.execution_id, record.token, "task", "it broke", NOW)


# ---------------------------------------------------------------- the users service's answers


def rpc_error(code: grpc.StatusCode, details: str, reason: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason:
        status = status_pb2.Status(code=code.value[0], message=details)
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="users"))
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details=details, debug_error_string=""
    )


def test_a_user_already_in_the_stage_is_a_done_job() -> None:
    error = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "same stage", reason="SAME_STAGE")
    assert job_outcome(UsersRefused.of(error)) == DONE


def test_answers_that_a_retry_cannot_change_spend_no_retry() -> None:
    for code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        outcome = job_outcome(UsersRefused.of(rpc_error(code, "no")))
        assert outcome == JobOutcome(f"users service: {code.name}: no", retryable=False)


def test_a_users_service_that_did_not_answer_is_retried() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        outcome = job_outcome(UsersRefused.of(rpc_error(code, "down")))
        assert outcome.error is not None and outcome.retryable


class FakeUsers:
    def __init__(self, answer: JobOutcome | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, JobRecord]] = []

    async def profile(self, user_id: uuid.UUID) -> None:
        return None

    async def _answer(self, name: str, record: JobRecord) -> JobOutcome:
        self.calls.append((name, record))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def set_stage(self, record: JobRecord) -> JobOutcome:
        return await self._answer("set_stage", record)

    async def update_attributes(self, record: JobRecord) -> JobOutcome:
        return await self._answer("update_attributes", record)


def builtin(users: FakeUsers) -> BuiltinJobs:
    return BuiltinJobs(cast(Stepper, None), users, timedelta(seconds=60))


async def test_each_built_in_type_calls_its_users_rpc() -> None:
    users = FakeUsers(DONE)
    stage, attributes = job(SET_STAGE), job(UPDATE_ATTRIBUTES)
    assert await builtin(users)._call(stage) == DONE
    assert await builtin(users)._call(attributes) == DONE
    assert users.calls == [("set_stage", stage), ("update_attributes", attributes)]


async def test_a_built_in_job_that_cannot_even_be_asked_for_is_an_incident_not_a_crash() -> None:
    outcome = await builtin(FakeUsers(KeyError("stage")))._call(job(SET_STAGE))
    assert outcome == JobOutcome("the engine could not do the job: KeyError: 'stage'")
    assert not outcome.retryable


# ---------------------------------------------------------------- the workers' rounds


class FakeTimers:
    def __init__(self, fired: Fired, next_due: datetime | None, batch: int = 10) -> None:
        self.fired = fired
        self.due = next_due
        self.batch = batch

    def now(self) -> datetime:
        return NOW

    def on_new(self, listener: Any) -> None:
        pass

    def on_clock_change(self, listener: Any) -> None:
        pass

    async def fire_due(self) -> Fired:
        return self.fired

    async def next_due(self) -> datetime | None:
        return self.due


async def timer_round(fired: Fired, next_due: datetime | None, poll: float = 1.0) -> float:
    worker = TimerWorker(cast(DueTimers, FakeTimers(fired, next_due)), poll)
    pause = await worker.round()
    assert isinstance(pause, float | int)
    return pause


async def test_a_full_batch_of_fired_timers_goes_on_at_once() -> None:
    assert await timer_round(Fired(10, 7), None) == 0


async def test_timers_whose_executions_are_all_busy_are_tried_again_soon() -> None:
    assert await timer_round(Fired(3, 0), None) == BUSY_PAUSE_SECONDS


async def test_the_timer_worker_sleeps_until_the_next_due_timer_at_most_a_poll() -> None:
    assert await timer_round(Fired(2, 2), NOW + timedelta(seconds=0.25)) == 0.25
    assert await timer_round(Fired(0, 0), NOW + timedelta(hours=1), poll=2.0) == 2.0
    assert await timer_round(Fired(0, 0), None, poll=2.0) == 2.0
    assert await timer_round(Fired(0, 0), NOW - timedelta(seconds=1)) <= 0


async def test_an_earlier_timer_than_the_one_it_sleeps_for_wakes_the_timer_worker() -> None:
    timers = FakeTimers(Fired(0, 0), NOW + timedelta(seconds=30))
    worker = TimerWorker(cast(DueTimers, timers), 60.0)
    woken: list[bool] = []
    worker.wake = lambda: woken.append(True)  # type: ignore[method-assign]
    await worker.round()
    worker.timer_added(NOW + timedelta(seconds=40))
    assert woken == []
    worker.timer_added(NOW + timedelta(seconds=10))
    assert woken == [True]


class FakeBuiltinJobs:
    def __init__(self, claimed: int) -> None:
        self.claimed = claimed
        self.limits: list[int] = []

    def on_new(self, listener: Any) -> None:
        pass

    async def work_once(self, limit: int) -> int:
        self.limits.append(limit)
        return self.claimed


async def test_the_built_in_job_worker_goes_on_at_once_after_a_full_batch_only() -> None:
    full = FakeBuiltinJobs(claimed=5)
    worker = BuiltinJobWorker(cast(BuiltinJobs, full), 5, 0.5)
    assert await worker.round() == 0
    assert full.limits == [5]
    partial = BuiltinJobWorker(cast(BuiltinJobs, FakeBuiltinJobs(claimed=4)), 5, 0.5)
    assert await partial.round() == 0.5
