"""The stepper: turns triggers into committed steps, for the use cases and the
workers alike.

A step: lock the executions concerned (in id order), load their tokens, run
the interpreter (interpreter.py) for each, follow what it asks of other
executions (start a called workflow, cancel one, tell a parent its child
ended, deliver a buffered message to a new subscription), then write every
change with one statement per table, and the lifecycle events to the outbox,
in the same transaction. Nothing is acknowledged before it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import asyncpg

from runtime.chains import Chain
from runtime.clock import Clock
from runtime.database import UnitOfWork
from runtime.errors import Internal, InvalidArgument, Unavailable
from runtime.identity import acting_for, current_caller
from runtime.lifecycle_events import EventBatch
from runtime.server import ServiceContext
from services.workflows.domain import (
    ACTIVE,
    PENDING,
    PRODUCER,
    Profile,
    execution_not_found,
)
from services.workflows.graph import Definition, Graph, compile_graph
from services.workflows.interpreter import Interpreter, VariablesTooLarge
from services.workflows.peers import ProfileReader
from services.workflows.state import (
    Cancel,
    ChildCompleted,
    ChildEnded,
    ChildRequest,
    ExecutionState,
    MessageDelivered,
    ParentNotice,
    Start,
    Trigger,
    UncaughtError,
)
from services.workflows.step_rows import Notes, collect
from services.workflows.stepper_events import correlation_key, event_follow_ups, resolve_calls
from services.workflows.store import definitions as workflow_store
from services.workflows.store import executions as execution_store
from services.workflows.store import messages as message_store
from services.workflows.store import steps
from services.workflows.store.definitions import WorkflowVersion
from services.workflows.store.executions import NewExecution, TokenKey
from services.workflows.store.messages import Waiting

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_FOLLOW_ROUNDS = 64
TRANSACTION_ATTEMPTS = 5
# The connection failed, not the work: never put down to one execution.
CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)

# Whom the lifecycle events of an execution's step are attributed to.
Attribution = Callable[[ExecutionState], Chain]


def by_caller(state: ExecutionState) -> Chain:
    """A step a call makes (a cancel, a publish, a job completed): its caller's."""
    return current_caller().actors


def by_starter(state: ExecutionState) -> Chain:
    """A start's step: the actors of that start's call, which the execution
    keeps (a batch of starts holds many calls)."""
    return state.actors


def by_engine(state: ExecutionState) -> Chain:
    """The engine's own step (a timer, a built-in task done): the service's,
    on behalf of whoever started the execution."""
    return acting_for(PRODUCER, state.actors).actors


@dataclass
class Advance:
    """What a step did: the executions it loaded and ran, the new ones it left
    out (their user runs the workflow already), those it skipped (locked, or
    their user's profile unreadable), and the errors no boundary event caught."""

    states: dict[uuid.UUID, ExecutionState]
    runs: dict[uuid.UUID, Interpreter]
    conflicts: set[uuid.UUID]
    skipped: set[uuid.UUID]
    uncaught: dict[uuid.UUID, list[UncaughtError]]


class _Subscribed(NamedTuple):
    """A token that started waiting for a message in this step."""

    execution_id: uuid.UUID
    user_id: uuid.UUID
    name: str
    token: int
    element: str
    # Its correlation key; None: the user id.
    key: str | None = None


def new_state(
    workflow_id: uuid.UUID,
    version: str,
    user_id: uuid.UUID,
    variables: dict[str, Any],
    now: datetime,
    *,
    actors: Chain,
) -> ExecutionState:
    """A pending execution, before its first step."""
    return ExecutionState(
        id=uuid.uuid4(),
        workflow_id=workflow_id,
        version=version,
        user_id=user_id,
        status=PENDING,
        variables=variables,
        next_token=1,
        tokens={},
        parent=None,
        started_at=now,
        new=True,
        actors=actors,
    )


def parent_trigger(execution_id: uuid.UUID, notice: ParentNotice, token: int) -> Trigger:
    """What the call activity (at `token`) of a parent learns when its called
    execution ends: it completed, or an incident says how it ended."""
    if notice.status == "completed":
        return ChildCompleted(token, notice.variables)
    detail = f": {notice.message}" if notice.message else ""
    return ChildEnded(token, f"called execution {execution_id} {notice.status}{detail}")


class Stepper:
    """Loads, steps and writes executions; shared by the use cases and the workers."""

    def __init__(self, context: ServiceContext, clock: Clock, profiles: ProfileReader) -> None:
        self.context = context
        self.clock = clock
        self._profiles = profiles
        self._graphs: dict[WorkflowVersion, Graph] = {}
        self._job_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._job_listeners: list[tuple[frozenset[str], Callable[[], None]]] = []
        self.timer_listeners: list[Callable[[datetime], None]] = []

    # ------------------------------------------------------------ transactions

    async def transaction(self, work: Callable[[UnitOfWork, Notes], Awaitable[T]]) -> T:
        """Runs `work` in one transaction, retried when PostgreSQL breaks a deadlock;
        wakes the workers its commit concerns."""
        for attempt in range(TRANSACTION_ATTEMPTS):
            notes = Notes()
            try:
                async with self.context.unit_of_work() as uow:
                    result = await work(uow, notes)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == TRANSACTION_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            self._notify(notes)
            return result
        raise AssertionError("unreachable")

    def _notify(self, notes: Notes) -> None:
        for job_type in notes.job_types:
            for waiter in self._job_waiters.get(job_type, ()):
                waiter.set()
        for types, woken in self._job_listeners:
            if types & notes.job_types:
                woken()
        if notes.earliest_timer is not None:
            for listener in self.timer_listeners:
                listener(notes.earliest_timer)

    def on_jobs(self, job_types: Iterable[str], listener: Callable[[], None]) -> None:
        """`listener` runs after each commit that created jobs of these types."""
        self._job_listeners.append((frozenset(job_types), listener))

    async def wait_for_jobs(self, job_type: str, seconds: float) -> None:
        """Until a commit creates jobs of this type, or `seconds` passed."""
        waiter = asyncio.Event()
        self._job_waiters[job_type].add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self._job_waiters[job_type].discard(waiter)

    def waiting_for_jobs(self, job_type: str) -> int:
        """How many calls wait for jobs of this type (wait_for_jobs) now."""
        return len(self._job_waiters.get(job_type, ()))

    async def contained(
        self,
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

    # ------------------------------------------------------------ graphs

    async def graphs(
        self, conn: asyncpg.Connection, keys: Iterable[WorkflowVersion]
    ) -> dict[WorkflowVersion, Graph]:
        """The compiled graphs of these versions (each compiled once per process)."""
        wanted = set(keys)
        missing = [key for key in wanted if key not in self._graphs]
        if missing:
            for key, data in (await workflow_store.load_definitions(conn, missing)).items():
                self._graphs[key] = compile_graph(Definition.from_json(data))
        return {key: self._graphs[key] for key in wanted}

    async def graph_of(self, conn: asyncpg.Connection, state: ExecutionState) -> Graph:
        key = WorkflowVersion(state.workflow_id, state.version)
        return (await self.graphs(conn, [key]))[key]

    # ------------------------------------------------------------ loading

    async def locked(self, conn: asyncpg.Connection, execution_id: uuid.UUID) -> ExecutionState:
        """The execution, locked for a step; NOT_FOUND if there is none."""
        states = await execution_store.lock_executions(conn, [execution_id])
        if execution_id not in states:
            raise execution_not_found(execution_id)
        return states[execution_id]

    # ------------------------------------------------------------ stepping

    async def advance(
        self,
        uow: UnitOfWork,
        notes: Notes,
        triggers: dict[uuid.UUID, list[Trigger]],
        new: Sequence[NewExecution] = (),
        *,
        skip_locked: bool = False,
        skip_unreadable_profiles: bool = False,
        attribute: Attribution = by_caller,
    ) -> Advance:
        """Inserts `new` executions and starts them, runs `triggers`, follows what
        the steps ask of other executions, and writes it all."""
        conn = uow.conn
        now = self.clock.now()
        result = Advance({}, {}, set(), set(), defaultdict(list))
        queue: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        if new:
            inserted = await execution_store.insert_executions(conn, new)
            for execution in new:
                if execution.state.id in inserted:
                    result.states[execution.state.id] = execution.state
                    queue[execution.state.id].append(Start())
                else:
                    result.conflicts.add(execution.state.id)
        for execution_id, items in triggers.items():
            queue[execution_id].extend(items)
        profiles: dict[uuid.UUID, Profile] = {}
        handled: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
        for round_no in range(MAX_FOLLOW_ROUNDS):
            if not queue:
                break
            # Only the step's own triggers may be left for later: another
            # execution's (a message thrown, a child's end) would be lost.
            first = round_no == 0
            await self._run_round(
                conn,
                result,
                queue,
                profiles,
                now,
                skip_locked=skip_locked and first,
                skip_unreadable_profiles=skip_unreadable_profiles and first,
            )
            queue = await self._follow_ups(conn, result, handled, now)
        else:
            raise Internal("a step kept calling other executions; stopped to be safe")
        await self._write(uow, notes, result, now, profiles, attribute=attribute)
        return result

    async def advance_request(
        self,
        uow: UnitOfWork,
        notes: Notes,
        triggers: dict[uuid.UUID, list[Trigger]],
        new: Sequence[NewExecution] = (),
    ) -> Advance:
        """A step on the variables a request brings: too large is the request's fault."""
        try:
            return await self.advance(uow, notes, triggers, new)
        except VariablesTooLarge as error:
            raise InvalidArgument.field("variables", str(error)) from error

    async def _run_round(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        queue: dict[uuid.UUID, list[Trigger]],
        profiles: dict[uuid.UUID, Profile],
        now: datetime,
        *,
        skip_locked: bool,
        skip_unreadable_profiles: bool,
    ) -> None:
        missing = [i for i in queue if i not in result.states]
        if missing:
            locked = await execution_store.lock_executions(conn, missing, skip_locked=skip_locked)
            result.states.update(locked)
            result.skipped.update(set(missing) - locked.keys())
        graphs = await self.graphs(
            conn, {WorkflowVersion(s.workflow_id, s.version) for s in result.states.values()}
        )
        await self._read_profiles(result, queue, graphs, profiles, skip=skip_unreadable_profiles)
        for execution_id, items in queue.items():
            state = result.states.get(execution_id)
            if state is None or execution_id in result.skipped:
                continue
            run = result.runs.get(execution_id)
            if run is None:
                graph = graphs[WorkflowVersion(state.workflow_id, state.version)]
                run = Interpreter(graph, state, now, profiles.get(state.user_id))
                result.runs[execution_id] = run
            for trigger in items:
                for _ in run.steps(trigger):
                    await asyncio.sleep(0)  # a long step lets the service's other calls run

    async def _read_profiles(
        self,
        result: Advance,
        queue: dict[uuid.UUID, list[Trigger]],
        graphs: dict[WorkflowVersion, Graph],
        profiles: dict[uuid.UUID, Profile],
        *,
        skip: bool,
    ) -> None:
        """The profiles of the users whose executions' expressions read `user`,
        before their first trigger. Skipping: an execution whose user's profile
        the users service did not give is left out of the step."""
        users: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for execution_id in queue:
            state = result.states.get(execution_id)
            if state is None or execution_id in result.runs:
                continue
            if graphs[WorkflowVersion(state.workflow_id, state.version)].needs_user:
                users[state.user_id].append(execution_id)
        wanted = [user for user in users if user not in profiles]
        answers = await asyncio.gather(
            *(self._profiles(user) for user in wanted), return_exceptions=True
        )
        for user, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, BaseException):
                if not skip or not isinstance(answer, Unavailable):
                    raise answer
                result.skipped.update(users[user])
            else:
                profiles[user] = answer

    async def _follow_ups(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        handled: dict[uuid.UUID, list[int]],
        now: datetime,
    ) -> dict[uuid.UUID, list[Trigger]]:
        """The triggers the steps so far give other executions (and new ones)."""
        queue: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        children: list[tuple[Interpreter, ChildRequest]] = []
        cancelled: list[TokenKey] = []
        subscribed: list[_Subscribed] = []
        for execution_id, run in list(result.runs.items()):
            step, done = run.step, handled[execution_id]
            children += [(run, child) for child in step.children[done[0] :]]
            cancelled += [TokenKey(execution_id, no) for no in step.cancelled_children[done[1] :]]
            for token, element, name in step.subscriptions[done[2] :]:
                key = correlation_key(run, token, element)
                subscribed.append(
                    _Subscribed(execution_id, run.state.user_id, name, token, element, key)
                )
            done[:] = [len(step.children), len(step.cancelled_children), len(step.subscriptions)]
            if step.parent_notice is not None:
                notice, step.parent_notice = step.parent_notice, None
                assert run.state.parent is not None
                parent, token = run.state.parent
                queue[parent].append(parent_trigger(execution_id, notice, token))
        if children:
            for execution_id in await self._start_children(conn, result, children, now):
                queue[execution_id].append(Start())
        if cancelled:
            for execution_id in await execution_store.child_executions(conn, cancelled):
                queue[execution_id].append(Cancel("its caller was interrupted", by_parent=True))
        if subscribed:
            await self._deliver_buffered(conn, result, subscribed, queue, now)
        await event_follow_ups(conn, result, queue, now, new_state)
        return queue

    async def _start_children(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        children: list[tuple[Interpreter, ChildRequest]],
        now: datetime,
    ) -> list[uuid.UUID]:
        """Inserts the executions call activities start; an incident on a call
        activity whose workflow is not active."""
        children = await resolve_calls(conn, children)
        workflows = await workflow_store.startable(
            conn, [uuid.UUID(child.workflow_id) for _, child in children]
        )
        new = []
        for run, child in children:
            alive = child.token in run.state.tokens
            found = workflows.get(uuid.UUID(child.workflow_id))
            if found is None or found.status != ACTIVE or not alive:
                if alive:
                    run.incident_at(
                        child.token, f"the called workflow {child.workflow_id} is not active"
                    )
                continue
            state = new_state(
                uuid.UUID(child.workflow_id),
                found.version,
                run.state.user_id,
                child.variables,
                now,
                actors=run.state.actors,
            )
            state.parent = (run.state.id, child.token)
            new.append(NewExecution(state, exclusive=False))
        await execution_store.insert_executions(conn, new)
        for execution in new:
            result.states[execution.state.id] = execution.state
        return [execution.state.id for execution in new]

    async def _deliver_buffered(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        subscribed: list[_Subscribed],
        queue: dict[uuid.UUID, list[Trigger]],
        now: datetime,
    ) -> None:
        """Hands each new subscription the oldest buffered message it has not had."""
        found = await message_store.buffered_messages(
            conn, [Waiting(s.execution_id, s.user_id, s.name, s.key) for s in subscribed], now
        )
        deliveries = []
        for s in subscribed:
            message = found.pop((s.execution_id, s.name), None)
            if message is None or s.token not in result.states[s.execution_id].tokens:
                continue
            queue[s.execution_id].append(MessageDelivered(s.token, s.element, message.variables))
            deliveries.append(steps.Delivery(message.id, s.execution_id))
        if deliveries:
            await steps.write(conn, steps.Writes(deliveries=deliveries))

    async def _write(
        self,
        uow: UnitOfWork,
        notes: Notes,
        result: Advance,
        now: datetime,
        profiles: dict[uuid.UUID, Profile],
        *,
        attribute: Attribution,
    ) -> None:
        runs = [run for run in result.runs.values() if run.step.changed]
        events = EventBatch(PRODUCER)
        w = steps.Writes(updated=[run.state for run in runs])
        for run in runs:
            collect(
                run,
                w,
                events,
                now=now,
                profiles=profiles,
                notes=notes,
                actors=attribute(run.state),
            )
            if run.step.uncaught_error is not None:
                result.uncaught[run.state.id].append(run.step.uncaught_error)
        await steps.write(uow.conn, w)
        events.publish(uow)
