"""The stepper's decisions, without a database: what the interpreter's step
becomes as rows and wake-ups (`collect`), what a parent learns of its called
execution, and its transactions (retried on a deadlock, waking the workers
only once committed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from runtime.database import UnitOfWork
from runtime.lifecycle_events import EventBatch
from runtime.server import ServiceContext
from services.workflows.bpmn import parse
from services.workflows.domain import (
    CANCELLED,
    COMPLETED,
    PRODUCER,
    RUNNING,
    Profile,
)
from services.workflows.graph import Graph, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.state import (
    ChildCompleted,
    ChildEnded,
    JobCompleted,
    ParentNotice,
    Start,
    TimerFired,
)
from services.workflows.step_rows import Notes, collect
from services.workflows.stepper import (
    TRANSACTION_ATTEMPTS,
    Stepper,
    new_state,
    parent_trigger,
)
from services.workflows.store.executions import TokenKey
from services.workflows.store.steps import NewJob, NewTimer, NewToken, Writes
from tests.workflows.bpmn_docs import boundary, catch, definitions, end, flow, linear, service
from tests.workflows.bpmn_docs import start as start_event

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)
ACTORS = ("alice",)


def graph_of(bpmn: str) -> Graph:
    return compile_graph(parse(bpmn, 1 << 20))


# A service task with an interrupting timer on it: an hour, then it gives up.
GUARDED_TASK = graph_of(
    definitions(
        start_event(),
        service("task", "work"),
        boundary("late", "task", duration="PT1H"),
        end("done"),
        end("gave_up"),
        flow("f1", "start", "task"),
        flow("f2", "task", "done"),
        flow("f3", "late", "gave_up"),
    )
)


def started(graph: Graph, **variables: Any) -> Interpreter:
    state = new_state(uuid.uuid4(), "1.0.0", uuid.uuid4(), variables, NOW, actors=ACTORS)
    run = Interpreter(graph, state, NOW)
    run.run(Start())
    return run


def collected(run: Interpreter, profile: Profile = None) -> tuple[Writes, Notes]:
    writes, notes = Writes(), Notes()
    collect(
        run,
        writes,
        EventBatch(PRODUCER),
        now=NOW,
        profiles={run.state.user_id: profile},
        notes=notes,
        actors=ACTORS,
    )
    return writes, notes


def test_a_start_writes_the_token_its_job_and_its_timer_and_wakes_both_workers() -> None:
    run = started(GUARDED_TASK)
    state = run.state
    assert state.status == RUNNING
    writes, notes = collected(run)
    assert writes.tokens == [NewToken(state.id, 1, "task", None, "f1")]
    assert writes.jobs == [
        NewJob(state.id, 1, "work", "task", state.workflow_id, state.user_id, {}, 3, NOW)
    ]
    due = NOW + timedelta(hours=1)
    assert writes.timers == [NewTimer(state.id, 1, "late", due, 0)]
    assert notes.job_types == {"work"}
    assert notes.earliest_timer == due


def test_what_belongs_to_a_token_the_same_step_removed_is_not_written() -> None:
    run = started(GUARDED_TASK)
    (timer,) = run.step.timers
    run.run(TimerFired(timer.token, timer.element))
    assert run.state.status == COMPLETED
    writes, notes = collected(run)
    # The task's token came and went in this step: no job, no timer, nothing to wake.
    assert writes.tokens == []
    assert writes.jobs == []
    assert writes.timers == []
    assert notes == Notes()
    assert [(h.element_id, h.state) for h in writes.history][-3:] == [
        ("task", "terminated"),
        ("late", "completed"),
        ("gave_up", "completed"),
    ]


def test_a_step_that_moves_on_from_stored_rows_removes_them() -> None:
    run = started(GUARDED_TASK)
    state = run.state
    # As if loaded in a later transaction: the token, its job and timer are stored.
    state.new = False
    run = Interpreter(GUARDED_TASK, state, NOW + timedelta(minutes=5))
    run.run(JobCompleted(1, {"result": 42}))
    writes, notes = collected(run)
    assert state.status == COMPLETED
    assert state.variables == {"result": 42}
    assert writes.removed_tokens == [TokenKey(state.id, 1)]
    assert writes.jobs == [] and notes.job_types == set()


def test_the_earliest_of_the_new_timers_is_noted() -> None:
    graph = graph_of(
        definitions(
            start_event(),
            service("task", "work"),
            boundary("soon", "task", duration="PT5M", interrupting=False),
            boundary("later", "task", duration="PT1H"),
            end("done"),
            end("nudged"),
            end("gave_up"),
            flow("f1", "start", "task"),
            flow("f2", "task", "done"),
            flow("f3", "soon", "nudged"),
            flow("f4", "later", "gave_up"),
        )
    )
    _, notes = collected(started(graph))
    assert notes.earliest_timer == NOW + timedelta(minutes=5)


def test_a_waiting_catch_event_writes_its_timer_and_no_job() -> None:
    run = started(graph_of(linear(start_event(), catch("wait", duration="P1D"), end())))
    writes, notes = collected(run)
    assert [(t.element_id, t.due_at) for t in writes.timers] == [("wait", NOW + timedelta(days=1))]
    assert notes.job_types == set()
    assert notes.earliest_timer == NOW + timedelta(days=1)


def test_a_parent_learns_of_its_called_execution() -> None:
    child = uuid.uuid4()
    assert parent_trigger(child, ParentNotice(COMPLETED, {"a": 1}, ""), 4) == ChildCompleted(
        4, {"a": 1}
    )
    assert parent_trigger(child, ParentNotice(CANCELLED, {}, ""), 4) == ChildEnded(
        4, f"called execution {child} cancelled"
    )
    assert parent_trigger(child, ParentNotice("failed", {}, "boom"), 2) == ChildEnded(
        2, f"called execution {child} failed: boom"
    )


def test_a_new_execution_is_pending_with_no_token_and_works_for_its_starter() -> None:
    state = new_state(uuid.uuid4(), "1.2.0", uuid.uuid4(), {"x": 1}, NOW, actors=ACTORS)
    assert (state.status, state.tokens, state.next_token, state.new) == ("pending", {}, 1, True)
    assert state.actors == ACTORS and state.started_at == NOW and state.parent is None


# ---------------------------------------------------------------- transactions


class FakeContext:
    """A context whose transactions commit in memory, failing as the test says."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.commits = 0
        self.attempts = 0

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        self.attempts += 1
        yield cast(UnitOfWork, None)
        if self.failures:
            raise self.failures.pop(0)
        self.commits += 1


def stepper_on(context: FakeContext) -> Stepper:
    async def no_profiles(user_id: uuid.UUID) -> Profile:
        raise AssertionError("no profile is read here")

    return Stepper(cast(ServiceContext, context), cast(Any, None), no_profiles)


async def test_a_transaction_broken_by_a_deadlock_runs_again_and_wakes_after_its_commit() -> None:
    context = FakeContext([asyncpg.DeadlockDetectedError("deadlock")])
    stepper = stepper_on(context)
    woken: list[int] = []
    stepper.on_jobs(["work"], lambda: woken.append(context.commits))
    stepper.on_jobs(["other"], lambda: woken.append(-1))

    async def work(uow: UnitOfWork, notes: Notes) -> str:
        notes.job_types.add("work")
        return "done"

    assert await stepper.transaction(work) == "done"
    assert context.attempts == 2
    # Once, after the commit that created the jobs; not for the attempt that failed.
    assert woken == [1]


async def test_a_transaction_gives_up_after_its_attempts() -> None:
    context = FakeContext(
        [asyncpg.DeadlockDetectedError("deadlock") for _ in range(TRANSACTION_ATTEMPTS)]
    )
    stepper = stepper_on(context)

    async def work(uow: UnitOfWork, notes: Notes) -> None:
        notes.job_types.add("work")

    with pytest.raises(asyncpg.DeadlockDetectedError):
        await stepper.transaction(work)
    assert context.attempts == TRANSACTION_ATTEMPTS and context.commits == 0


async def test_a_transaction_that_fails_otherwise_is_not_retried_and_wakes_nobody() -> None:
    context = FakeContext([asyncpg.UniqueViolationError("taken")])
    stepper = stepper_on(context)
    woken: list[str] = []
    stepper.on_jobs(["work"], lambda: woken.append("work"))

    async def work(uow: UnitOfWork, notes: Notes) -> None:
        notes.job_types.add("work")

    with pytest.raises(asyncpg.UniqueViolationError):
        await stepper.transaction(work)
    assert context.attempts == 1 and woken == []


async def test_a_long_poll_waits_for_a_commit_creating_jobs_of_its_type() -> None:
    stepper = stepper_on(FakeContext([]))
    waiting = asyncio.ensure_future(stepper.wait_for_jobs("work", 30))
    await asyncio.sleep(0)
    assert stepper.waiting_for_jobs("work") == 1

    async def other(uow: UnitOfWork, notes: Notes) -> None:
        notes.job_types.add("other")

    await stepper.transaction(other)
    await asyncio.sleep(0)
    assert not waiting.done()

    async def work(uow: UnitOfWork, notes: Notes) -> None:
        notes.job_types.add("work")

    await stepper.transaction(work)
    await asyncio.wait_for(waiting, 1)
    assert stepper.waiting_for_jobs("work") == 0


async def test_a_long_poll_ends_after_its_time_without_jobs() -> None:
    stepper = stepper_on(FakeContext([]))
    await asyncio.wait_for(stepper.wait_for_jobs("work", 0.01), 1)
    assert stepper.waiting_for_jobs("work") == 0
