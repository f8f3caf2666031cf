"""The workflows service's use cases, and the runner that turns triggers into
committed steps.

A step: lock the executions concerned (in id order), load their tokens, run
the interpreter (engine.py) for each, follow what it asks of other executions
(start a called workflow, cancel one, tell a parent its child ended, deliver a
buffered message to a new subscription), then write every change with one
statement per table, and the lifecycle events to the outbox, in the same
transaction. Nothing is acknowledged before it is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import asyncpg
import grpc

from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime import idempotency, tombstones
from runtime.chains import Chain
from runtime.database import UnitOfWork
from runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from runtime.group_commit import GroupCommit
from runtime.idempotency import RequestKey
from runtime.identity import acting_for, current_caller
from runtime.isolation import write_apart
from runtime.lifecycle_events import EventBatch
from runtime.server import ServiceContext
from runtime.stages import stage_name
from runtime.structs import struct_to_dict
from services.workflows import store
from services.workflows.bpmn import Definition, Graph, compile_graph, parse
from services.workflows.clock import Clock
from services.workflows.engine import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    PENDING,
    Cancel,
    ChildCompleted,
    ChildEnded,
    ErrorThrown,
    ExecutionState,
    Interpreter,
    JobCompleted,
    MessageDelivered,
    Reactivate,
    Start,
    Trigger,
    VariablesTooLarge,
)
from services.workflows.store import NewExecution, VersionRow, WorkflowRecord

log = logging.getLogger(__name__)
PRODUCER = "workflows"
T = TypeVar("T")

DRAFT, ACTIVE, INACTIVE, ARCHIVED = "draft", "active", "inactive", "archived"
# Target status -> the statuses it may be reached from.
STATUS_MOVES = {ACTIVE: {DRAFT, INACTIVE}, INACTIVE: {ACTIVE}, ARCHIVED: {DRAFT, INACTIVE}}
HISTORY_LIMIT = 1000
MAX_FOLLOW_ROUNDS = 64
TRANSACTION_ATTEMPTS = 5
# Starts written together: batches at a time (each holds a connection), their
# size, and the backlog that opens another lane (measured in bench/RESULTS.md:
# fewer, fuller batches beat many small ones).
START_LANES = 4
START_BATCH = 64
START_BACKLOG = 16
RETRY_BACKOFF_BASE = 1.0
RETRY_BACKOFF_MAX = 600.0

# A user profile for expressions: {"id", "stage", "attributes"}; None once erased.
Profile = dict[str, Any] | None
ProfileReader = Callable[[uuid.UUID], Awaitable[Profile]]
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


def backoff(failures: int) -> timedelta:
    """Exponential: 1 s, 2 s, 4 s, ... capped at 10 minutes."""
    return timedelta(seconds=min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2 ** max(0, failures - 1)))


def job_key(execution_id: uuid.UUID, token: int) -> str:
    return f"{execution_id}.{token}"


def parse_job_key(key: str) -> tuple[uuid.UUID, int] | None:
    execution, _, token = key.partition(".")
    try:
        return uuid.UUID(execution), int(token)
    except ValueError:
        return None


def users_profile_reader(context: ServiceContext) -> ProfileReader:
    """Reads a user's stage and attributes from the users service (GetUser)."""

    async def read(user_id: uuid.UUID) -> Profile:
        stub = users_pb2_grpc.UserServiceStub(context.clients.channel("users"))
        try:
            reply = await stub.GetUser(
                users_pb2.GetUserRequest(user_id=str(user_id)), timeout=context.clients.timeout()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(
                f"the users service did not answer GetUser: {error.code().name}",
                reason="USERS_UNAVAILABLE",
            ) from error
        return {
            "id": reply.user.id,
            "stage": stage_name(reply.user.lifecycle_stage),
            "attributes": struct_to_dict(reply.user.attributes),
        }

    return read


@dataclass
class Notes:
    """What a committed step tells the workers: job types to wake, the earliest new timer."""

    job_types: set[str] = field(default_factory=set)
    earliest_timer: datetime | None = None


@dataclass
class Advance:
    states: dict[uuid.UUID, ExecutionState]
    runs: dict[uuid.UUID, Interpreter]
    conflicts: set[uuid.UUID]
    skipped: set[uuid.UUID]
    uncaught: dict[uuid.UUID, list[tuple[int, str]]]


class Engine:
    """Runs steps; shared by the API handlers and the workers."""

    def __init__(self, context: ServiceContext, clock: Clock, profiles: ProfileReader) -> None:
        self.context = context
        self.clock = clock
        self._profiles = profiles
        self._graphs: dict[tuple[uuid.UUID, str], Graph] = {}
        self._job_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
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
        if notes.earliest_timer is not None:
            for listener in self.timer_listeners:
                listener(notes.earliest_timer)

    async def wait_for_jobs(self, job_type: str, seconds: float) -> None:
        waiter = asyncio.Event()
        self._job_waiters[job_type].add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self._job_waiters[job_type].discard(waiter)

    # ------------------------------------------------------------ graphs

    async def graphs(
        self, conn: asyncpg.Connection, keys: Iterable[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], Graph]:
        wanted = set(keys)
        missing = [key for key in wanted if key not in self._graphs]
        if missing:
            for key, data in (await store.load_definitions(conn, missing)).items():
                self._graphs[key] = compile_graph(Definition.from_json(data))
        return {key: self._graphs[key] for key in wanted}

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
        conn = uow.conn
        now = self.clock.now()
        result = Advance({}, {}, set(), set(), defaultdict(list))
        queue: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        if new:
            inserted = await store.insert_executions(conn, new)
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
        for _ in range(MAX_FOLLOW_ROUNDS):
            if not queue:
                break
            await self._run_round(
                conn,
                result,
                queue,
                profiles,
                now,
                skip_locked=skip_locked,
                skip_unreadable_profiles=skip_unreadable_profiles,
            )
            queue = await self._follow_ups(conn, result, handled, now)
        else:
            raise Internal("a step kept calling other executions; stopped to be safe")
        await self._write(uow, notes, result, now, profiles, attribute=attribute)
        return result

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
            locked = await store.lock_executions(conn, missing, skip_locked=skip_locked)
            result.states.update(locked)
            result.skipped.update(set(missing) - locked.keys())
        graphs = await self.graphs(
            conn, {(s.workflow_id, s.version) for s in result.states.values()}
        )
        await self._read_profiles(result, queue, graphs, profiles, skip=skip_unreadable_profiles)
        for execution_id, items in queue.items():
            state = result.states.get(execution_id)
            if state is None or execution_id in result.skipped:
                continue
            run = result.runs.get(execution_id)
            if run is None:
                graph = graphs[(state.workflow_id, state.version)]
                run = Interpreter(graph, state, now, profiles.get(state.user_id))
                result.runs[execution_id] = run
            for trigger in items:
                run.run(trigger)

    async def _read_profiles(
        self,
        result: Advance,
        queue: dict[uuid.UUID, list[Trigger]],
        graphs: dict[tuple[uuid.UUID, str], Graph],
        profiles: dict[uuid.UUID, Profile],
        *,
        skip: bool,
    ) -> None:
        users: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for execution_id in queue:
            state = result.states.get(execution_id)
            if state is None or execution_id in result.runs:
                continue
            if graphs[(state.workflow_id, state.version)].needs_user:
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
        queue: dict[uuid.UUID, list[Trigger]] = defaultdict(list)
        children: list[tuple[Interpreter, int, str, dict[str, Any]]] = []
        cancelled: list[tuple[uuid.UUID, int]] = []
        subscribed: list[tuple[uuid.UUID, uuid.UUID, str, int, str]] = []
        for execution_id, run in list(result.runs.items()):
            step, done = run.step, handled[execution_id]
            for child in step.children[done[0] :]:
                children.append((run, child.token, child.workflow_id, child.variables))
            cancelled += [(execution_id, token) for token in step.cancelled_children[done[1] :]]
            for token, element, name in step.subscriptions[done[2] :]:
                subscribed.append((execution_id, run.state.user_id, name, token, element))
            done[:] = [len(step.children), len(step.cancelled_children), len(step.subscriptions)]
            if step.parent_notice is not None:
                status, variables, message = step.parent_notice
                step.parent_notice = None
                assert run.state.parent is not None
                parent, token = run.state.parent
                if status == "completed":
                    queue[parent].append(ChildCompleted(token, variables))
                else:
                    detail = f": {message}" if message else ""
                    queue[parent].append(
                        ChildEnded(token, f"called execution {execution_id} {status}{detail}")
                    )
        if children:
            for execution_id in await self._start_children(conn, result, children, now):
                queue[execution_id].append(Start())
        if cancelled:
            for execution_id in await store.child_executions(conn, cancelled):
                queue[execution_id].append(Cancel("its caller was interrupted", by_parent=True))
        if subscribed:
            await self._deliver_buffered(conn, result, subscribed, queue, now)
        return queue

    async def _start_children(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        children: list[tuple[Interpreter, int, str, dict[str, Any]]],
        now: datetime,
    ) -> list[uuid.UUID]:
        workflows = await store.startable(conn, [uuid.UUID(c[2]) for c in children])
        new = []
        for run, token, workflow_id, variables in children:
            found = workflows.get(uuid.UUID(workflow_id))
            if found is None or found[0] != ACTIVE or token not in run.state.tokens:
                if token in run.state.tokens:
                    run.incident_at(token, f"the called workflow {workflow_id} is not active")
                continue
            state = new_state(
                uuid.UUID(workflow_id),
                found[1],
                run.state.user_id,
                variables,
                now,
                actors=run.state.actors,
            )
            state.parent = (run.state.id, token)
            new.append(NewExecution(state, exclusive=False))
        await store.insert_executions(conn, new)
        for execution in new:
            result.states[execution.state.id] = execution.state
        return [execution.state.id for execution in new]

    async def _deliver_buffered(
        self,
        conn: asyncpg.Connection,
        result: Advance,
        subscribed: list[tuple[uuid.UUID, uuid.UUID, str, int, str]],
        queue: dict[uuid.UUID, list[Trigger]],
        now: datetime,
    ) -> None:
        found = await store.buffered_messages(conn, [s[:3] for s in subscribed], now)
        deliveries = []
        for execution_id, _, name, token, element in subscribed:
            message = found.pop((execution_id, name), None)
            if message is None or token not in result.states[execution_id].tokens:
                continue
            queue[execution_id].append(MessageDelivered(token, element, message.variables))
            deliveries.append((message.id, execution_id))
        if deliveries:
            await store.write(conn, store.Writes(deliveries=deliveries))

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
        w = store.Writes(updated=[run.state for run in runs])
        for run in runs:
            _collect(
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
        await store.write(uow.conn, w)
        events.publish(uow)


def _collect(
    run: Interpreter,
    w: store.Writes,
    events: EventBatch,
    *,
    now: datetime,
    profiles: dict[uuid.UUID, Profile],
    notes: Notes,
    actors: Chain,
) -> None:
    """Adds the rows and lifecycle events of `run`'s step, attributed to
    `actors`; notes what its commit must wake."""
    state, step = run.state, run.step
    execution_id, alive = state.id, state.tokens
    w.removed_tokens += [(execution_id, no) for no in step.removed]
    w.consumed_timers += [(execution_id, no, el) for no, el in step.consumed_timers]
    for no in sorted(step.added):
        token = alive[no]
        w.tokens.append((execution_id, no, token.element, token.scope, token.via))
    for timer in step.timers:
        if timer.token in alive:
            w.timers.append((execution_id, timer.token, timer.element, timer.due_at, timer.repeat))
            if notes.earliest_timer is None or timer.due_at < notes.earliest_timer:
                notes.earliest_timer = timer.due_at
    w.subscriptions += [
        (execution_id, token, element, name, state.user_id)
        for token, element, name in step.subscriptions
        if token in alive
    ]
    for job in step.jobs:
        if job.token in alive:
            w.jobs.append(
                (
                    execution_id,
                    job.token,
                    job.type,
                    job.element,
                    state.workflow_id,
                    state.user_id,
                    job.headers,
                    job.retries,
                    now,
                )
            )
            notes.job_types.add(job.type)
    w.incidents += [
        (execution_id, i.token, i.element, False, i.message, now)
        for i in step.incidents
        if i.token in alive
    ]
    w.history += [(execution_id, h.element, h.type, h.state, h.at) for h in step.history]
    profile = profiles.get(state.user_id)
    stage = profile.get("stage") if profile else None
    for event_type, data in step.events:
        events.add(
            event_type,
            now,
            user_id=state.user_id,
            stage=stage,
            data=data,
            workflow_execution_id=execution_id,
            actors=actors,
        )


def new_state(
    workflow_id: uuid.UUID,
    version: str,
    user_id: uuid.UUID,
    variables: dict[str, Any],
    now: datetime,
    *,
    actors: Chain,
) -> ExecutionState:
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


# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class WorkflowFields:
    name: str
    description: str
    bpmn_xml: str
    stages: list[str]
    created_by: uuid.UUID | None = None


def next_version(version: str) -> str:
    """A changed BPMN is a new minor version: 1.0.0 -> 1.1.0."""
    major, minor, _ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


class Catalog:
    """Workflow definitions: create, read, change, status moves, delete."""

    def __init__(self, engine: Engine, max_bpmn_bytes: int) -> None:
        self._engine = engine
        self._max_bpmn_bytes = max_bpmn_bytes

    def version_row(self, bpmn_xml: str) -> VersionRow:
        """Parses and validates the BPMN; raises BpmnError."""
        definition = parse(bpmn_xml, self._max_bpmn_bytes)
        return VersionRow(
            bpmn_xml,
            definition.to_json(),
            hashlib.sha256(bpmn_xml.encode()).digest(),
            definition.start_message,
        )

    async def create(
        self, fields: WorkflowFields, version: VersionRow, key: RequestKey | None
    ) -> WorkflowRecord:
        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)):
                return await self._existing(uow.conn, json.loads(stored)["workflow_id"])
            workflow = await store.insert_workflow(
                uow.conn,
                fields.name,
                fields.description,
                fields.stages,
                created_by=fields.created_by,
                version=version,
            )
            if key is not None:
                await idempotency.store(
                    uow.conn, key, json.dumps({"workflow_id": str(workflow.id)}).encode()
                )
            return workflow

        return await self._engine.transaction(work)

    async def _existing(self, conn: asyncpg.Connection, workflow_id: str) -> WorkflowRecord:
        workflow = await store.get_workflow(conn, uuid.UUID(workflow_id))
        if workflow is None:
            raise NotFound("the workflow this request created was deleted since")
        return workflow

    async def get(self, workflow_id: uuid.UUID, version: str) -> WorkflowRecord:
        pool = self._engine.context.pool
        if version:
            found = await store.get_workflow_version(pool, workflow_id, version)
            if found is None:
                raise NotFound(
                    f"workflow {workflow_id} has no version {version}",
                    reason="VERSION_NOT_FOUND",
                    metadata={"workflow_id": str(workflow_id), "version": version},
                )
            return found
        return _found(await store.get_workflow(pool, workflow_id), workflow_id)

    async def page(
        self,
        statuses: list[str],
        stages: list[str],
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[WorkflowRecord]:
        return await store.list_workflows(
            self._engine.context.pool, statuses, stages, cursor, limit
        )

    async def update(
        self,
        workflow_id: uuid.UUID,
        fields: dict[str, Any],
        version: VersionRow | None,
    ) -> WorkflowRecord:
        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            current = _found(
                await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id
            )
            if current.status == ARCHIVED:
                raise FailedPrecondition(
                    "an archived workflow cannot change", reason="WORKFLOW_ARCHIVED"
                )
            number = current.version
            bpmn = current.bpmn_xml
            if version is not None:
                checksum = await store.version_checksum(uow.conn, workflow_id, current.version)
                if checksum != version.checksum:
                    # Executions may run on any version that was ever active.
                    if current.status != DRAFT:
                        number = next_version(current.version)
                    await store.save_version(uow.conn, workflow_id, number, version)
                    bpmn = version.bpmn_xml
            return await store.update_workflow(
                uow.conn,
                workflow_id,
                name=fields.get("name", current.name),
                description=fields.get("description", current.description),
                stages=fields.get("stages", current.stages),
                bpmn_xml=bpmn,
                version=number,
            )

        return await self._engine.transaction(work)

    async def move(self, workflow_id: uuid.UUID, target: str) -> WorkflowRecord:
        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            current = _found(
                await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id
            )
            if current.status == target:
                return current
            if current.status not in STATUS_MOVES[target]:
                raise FailedPrecondition(
                    f"a workflow cannot go from {current.status} to {target}",
                    reason="ILLEGAL_STATUS_CHANGE",
                    metadata={"from": current.status, "to": target},
                )
            return await store.set_status(uow.conn, workflow_id, target)

        return await self._engine.transaction(work)

    async def delete(self, workflow_id: uuid.UUID, force: bool) -> int:
        async def work(uow: UnitOfWork, notes: Notes) -> int:
            _found(await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id)
            running = await store.running_executions(uow.conn, workflow_id)
            if running and not force:
                raise FailedPrecondition(
                    f"{len(running)} executions of the workflow are running; set force",
                    reason="EXECUTIONS_RUNNING",
                    metadata={"running": str(len(running))},
                )
            if running:
                cancel: list[Trigger] = [Cancel("the workflow was deleted")]
                await self._engine.advance(uow, notes, {i: list(cancel) for i in running})
            await store.delete_workflow(uow.conn, workflow_id)
            return len(running)

        return await self._engine.transaction(work)


def _startable(check: store.StartCheck, request: StartRequest) -> str:
    """The version a start runs on, if its workflow may start for its user."""
    if check.found is None:
        raise _workflow_not_found(request.workflow_id)
    status, version = check.found
    if status != ACTIVE:
        raise FailedPrecondition(
            f"workflow {request.workflow_id} is {status}; only active workflows start",
            reason="WORKFLOW_NOT_ACTIVE",
            metadata={"status": status},
        )
    if check.erased:
        raise FailedPrecondition(f"user {request.user_id} was erased", reason="USER_ERASED")
    return version


def _start_reply(execution_id: uuid.UUID) -> bytes:
    return json.dumps({"execution_id": str(execution_id)}).encode()


def _workflow_not_found(workflow_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"workflow {workflow_id} does not exist",
        reason="WORKFLOW_NOT_FOUND",
        metadata={"workflow_id": str(workflow_id)},
    )


def _found(workflow: WorkflowRecord | None, workflow_id: uuid.UUID) -> WorkflowRecord:
    if workflow is None:
        raise _workflow_not_found(workflow_id)
    return workflow


# ---------------------------------------------------------------- executions


@dataclass(frozen=True)
class Started:
    execution: store.ExecutionView
    existing: bool


@dataclass(frozen=True)
class Published:
    delivered: int
    buffered: bool
    duplicate: bool
    # Set when the message could not be published: the database refused a value
    # of it, or it failed on an internal error (runtime.isolation).
    error: Exception | None = None


@dataclass(frozen=True)
class StartRequest:
    """One StartExecution call."""

    workflow_id: uuid.UUID
    user_id: uuid.UUID
    variables: dict[str, Any]
    key: RequestKey | None
    use_existing: bool
    exclusive: bool
    # The actors of the call: the execution works for them.
    actors: Chain


# A start the batch leaves to a transaction of its own: its request_id was used,
# the user runs the workflow already, or another start in the batch is its twin.
ALONE = object()
START_METHOD = "StartExecution"
Outcome = Started | uuid.UUID | object


class Executions:
    """Starting, reading, cancelling executions; messages, jobs, incidents, erase."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._starts: GroupCommit[StartRequest, Outcome] = GroupCommit(
            self._start_together,
            name="StartExecution batch",
            tracer=engine.context.tracer_provider.get_tracer(__name__),
            lanes=START_LANES,
            max_weight=START_BATCH,
            backlog_per_lane=START_BACKLOG,
        )

    async def start(self, request: StartRequest) -> Started:
        """Starts that arrive together commit together (runtime.group_commit)."""
        outcome = await self._starts.submit(request)
        if outcome is ALONE:
            outcome = await self._start_alone_now(request)
        if isinstance(outcome, Started):
            return outcome
        assert isinstance(outcome, uuid.UUID)
        return Started(await self.get(outcome), existing=True)

    async def _start_together(self, requests: Sequence[StartRequest]) -> list[Outcome | Exception]:
        if len(requests) == 1:
            return [await self._start_alone_now(requests[0])]
        try:
            return await self._engine.transaction(
                lambda uow, notes: self._start_batch(requests, uow, notes)
            )
        except (asyncpg.PostgresError, ServiceError) as error:
            # One start spoiled the batch (a request_id taken meanwhile, a user
            # service that did not answer, a value the database refused): each
            # start finds its own answer alone.
            log.info("a batch of %d starts runs alone: %s", len(requests), error)
            return [ALONE] * len(requests)

    async def _start_alone_now(self, request: StartRequest) -> Outcome:
        return await self._engine.transaction(
            lambda uow, notes: self._start_alone(request, uow, notes)
        )

    async def _start_batch(
        self, requests: Sequence[StartRequest], uow: UnitOfWork, notes: Notes
    ) -> list[Outcome | Exception]:
        engine = self._engine
        now = engine.clock.now()
        await store.lock_users(uow.conn, [r.user_id for r in requests])
        checks = await store.start_checks(
            uow.conn,
            [(r.workflow_id, r.user_id, r.key.request_id if r.key else None) for r in requests],
            START_METHOD,
        )
        outcomes: list[Outcome | Exception] = [ALONE] * len(requests)
        new: dict[int, NewExecution] = {}
        taken: set[object] = set()
        for n, (request, check) in enumerate(zip(requests, checks, strict=True)):
            twins: set[object] = {request.key.request_id} if request.key else set()
            if request.exclusive:
                twins.add((request.workflow_id, request.user_id))
            if check.claimed or (request.exclusive and check.running) or twins & taken:
                continue
            try:
                version = _startable(check, request)
            except ServiceError as error:
                outcomes[n] = error
                continue
            taken |= twins
            state = new_state(
                request.workflow_id,
                version,
                request.user_id,
                request.variables,
                now,
                actors=request.actors,
            )
            new[n] = NewExecution(state, request.exclusive)
        advanced = await engine.advance(uow, notes, {}, list(new.values()), attribute=by_starter)
        answered = []
        for n, execution in new.items():
            state = execution.state
            if state.id in advanced.conflicts:
                continue
            outcomes[n] = Started(_view_of(state, advanced.runs[state.id]), existing=False)
            if (key := requests[n].key) is not None:
                answered.append((key, _start_reply(state.id)))
        await idempotency.record(uow.conn, answered)
        return outcomes

    async def _start_alone(
        self, request: StartRequest, uow: UnitOfWork, notes: Notes
    ) -> Started | uuid.UUID:
        engine, conn, key = self._engine, uow.conn, request.key
        if key is not None and (stored := await idempotency.claim(conn, key)):
            return uuid.UUID(json.loads(stored)["execution_id"])
        await store.lock_users(conn, [request.user_id])
        check = (
            await store.start_checks(
                conn, [(request.workflow_id, request.user_id, None)], START_METHOD
            )
        )[0]
        version = _startable(check, request)
        state = new_state(
            request.workflow_id,
            version,
            request.user_id,
            request.variables,
            engine.clock.now(),
            actors=request.actors,
        )
        advanced = await engine.advance(
            uow, notes, {}, [NewExecution(state, request.exclusive)], attribute=by_starter
        )
        state_id = state.id
        if state.id in advanced.conflicts:
            running = await store.existing_execution(conn, request.workflow_id, request.user_id)
            if not request.use_existing or running is None:
                raise AlreadyExists(
                    f"user {request.user_id} already runs workflow {request.workflow_id}",
                    reason="EXECUTION_RUNNING",
                    metadata={"execution_id": str(running or "")},
                )
            state_id = running
        if key is not None:
            await idempotency.store(conn, key, _start_reply(state_id))
        if state_id != state.id:
            return state_id
        return Started(_view_of(state, advanced.runs[state.id]), existing=False)

    async def get(self, execution_id: uuid.UUID) -> store.ExecutionView:
        found = await store.get_execution(self._engine.context.pool, execution_id, HISTORY_LIMIT)
        if found is None:
            raise _execution_not_found(execution_id)
        return found

    async def page(
        self,
        workflow_id: uuid.UUID | None,
        user_id: uuid.UUID | None,
        statuses: list[str],
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[store.ExecutionView]:
        return await store.list_executions(
            self._engine.context.pool, workflow_id, user_id, statuses, cursor=cursor, limit=limit
        )

    async def cancel(self, execution_id: uuid.UUID) -> store.ExecutionView:
        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state = await self._locked(uow.conn, execution_id)
            if state.status in ENDED_STATUSES:
                raise FailedPrecondition(
                    f"the execution is {state.status} already", reason="EXECUTION_ENDED"
                )
            await self._engine.advance(
                uow, notes, {execution_id: [Cancel("cancelled through the API")]}
            )

        await self._engine.transaction(work)
        return await self.get(execution_id)

    async def _locked(self, conn: asyncpg.Connection, execution_id: uuid.UUID) -> ExecutionState:
        states = await store.lock_executions(conn, [execution_id])
        if execution_id not in states:
            raise _execution_not_found(execution_id)
        return states[execution_id]

    async def publish(self, messages: Sequence[store.NewMessage]) -> list[Published]:
        """Each message's outcome as if it were published alone, in order. The
        messages go in waves of one per user, a transaction each: a user's first
        message is settled before the next one is matched."""
        waves: list[list[int]] = []
        seen: Counter[uuid.UUID] = Counter()
        for position, message in enumerate(messages):
            rank = seen[message.user_id]
            seen[message.user_id] += 1
            if rank == len(waves):
                waves.append([])
            waves[rank].append(position)
        results: dict[int, Published] = {}
        for wave in waves:
            parts = await write_apart(wave, partial(self._publish_positions, messages))
            for part in parts:
                published = part.result or [Published(0, False, False, part.error)]
                results.update(zip(part.items, published, strict=True))
        return [results[n] for n in range(len(messages))]

    async def _publish_positions(
        self, messages: Sequence[store.NewMessage], positions: Sequence[int]
    ) -> list[Published]:
        return await self._engine.transaction(
            partial(self._publish_wave, [messages[n] for n in positions])
        )

    async def _publish_wave(
        self, messages: list[store.NewMessage], uow: UnitOfWork, notes: Notes
    ) -> list[Published]:
        conn, now = uow.conn, self._engine.clock.now()
        users = [m.user_id for m in messages]
        # Alone: a step of the user that subscribes meanwhile would otherwise
        # miss a message this publish buffers, and the publish miss the step.
        await store.lock_users_alone(conn, users)
        erased = await tombstones.erased_among(conn, users)
        live = [m for m in messages if m.user_id not in erased]
        keyed = [m for m in live if m.message_id]
        fresh = await store.record_message_ids(conn, keyed, now) if keyed else set()
        duplicates = {m.user_id for m in keyed if m.user_id not in fresh}
        going = [m for m in live if m.user_id not in duplicates]
        waiting = await store.subscribers(conn, [(m.user_id, m.name) for m in going])
        starting = await store.message_start_workflows(conn, {m.name for m in going})
        publisher = current_caller().actors
        triggers: dict[uuid.UUID, list[Trigger]] = {}
        new: dict[uuid.UUID, list[NewExecution]] = defaultdict(list)
        for m in going:
            for execution_id, token, element in waiting.get(m.user_id, ()):
                triggers[execution_id] = [MessageDelivered(token, element, m.variables)]
            for workflow_id, version in starting.get(m.name, ()):
                state = new_state(
                    workflow_id, version, m.user_id, dict(m.variables), now, actors=publisher
                )
                new[m.user_id].append(NewExecution(state, exclusive=True))
        advanced = await self._advance_with(
            uow, notes, triggers, [e for started in new.values() for e in started]
        )
        results, buffered = [], []
        for m in messages:
            if m.user_id in erased or m.user_id in duplicates:
                results.append(Published(0, False, m.user_id in duplicates))
                continue
            delivered = sum(1 for i, _, _ in waiting.get(m.user_id, ()) if i in advanced.runs)
            delivered += sum(
                1 for e in new.get(m.user_id, ()) if e.state.id not in advanced.conflicts
            )
            # Only a message no execution received waits for a later one.
            kept = not delivered and m.ttl > timedelta(0)
            if kept:
                buffered.append(m)
            results.append(Published(delivered, kept, False))
        if buffered:
            await store.buffer_messages(conn, buffered, now)
        return results

    # ------------------------------------------------------------ jobs

    async def activate_jobs(
        self, job_type: str, worker: str, limit: int, lease: timedelta
    ) -> list[store.JobRecord]:
        engine = self._engine

        async def work(uow: UnitOfWork, notes: Notes) -> list[store.JobRecord]:
            now = engine.clock.now()
            return await store.activate_jobs(
                uow.conn, [job_type], worker, limit=limit, now=now, deadline=now + lease
            )

        return await engine.transaction(work)

    async def _activated_job(
        self, uow: UnitOfWork, key: str
    ) -> tuple[ExecutionState, store.JobRecord]:
        parsed = parse_job_key(key)
        if parsed is None:
            raise InvalidArgument.field("job_key", "is not a job key")
        execution_id, token = parsed
        states = await store.lock_executions(uow.conn, [execution_id])
        job = await store.get_job(uow.conn, execution_id, token)
        if execution_id not in states or job is None:
            raise NotFound(f"job {key} does not exist (done or cancelled?)", reason="JOB_NOT_FOUND")
        if job.state != "activated":
            raise FailedPrecondition(
                f"job {key} is {job.state}, not activated", reason="JOB_NOT_ACTIVATED"
            )
        return states[execution_id], job

    async def complete_job(self, key: str, variables: dict[str, Any]) -> None:
        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state, job = await self._activated_job(uow, key)
            await self._advance_one(uow, notes, state, JobCompleted(job.token, variables))

        await self._engine.transaction(work)

    async def _advance_one(
        self, uow: UnitOfWork, notes: Notes, state: ExecutionState, trigger: Trigger
    ) -> Advance:
        return await self._advance_with(uow, notes, {state.id: [trigger]})

    async def _advance_with(
        self,
        uow: UnitOfWork,
        notes: Notes,
        triggers: dict[uuid.UUID, list[Trigger]],
        new: Sequence[NewExecution] = (),
    ) -> Advance:
        """A step on the variables a request brings: too large is the request's fault."""
        try:
            return await self._engine.advance(uow, notes, triggers, new)
        except VariablesTooLarge as error:
            raise InvalidArgument.field("variables", str(error)) from error

    async def fail_job(
        self, key: str, retries: int, message: str, retry_backoff: timedelta | None
    ) -> None:
        engine = self._engine

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            _, job = await self._activated_job(uow, key)
            await record_failure(
                uow.conn,
                job,
                retries=retries,
                message=message,
                retry_backoff=retry_backoff,
                now=engine.clock.now(),
            )

        await engine.transaction(work)

    async def throw_error(
        self, key: str, code: str, message: str, variables: dict[str, Any]
    ) -> None:
        engine = self._engine

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state, job = await self._activated_job(uow, key)
            advanced = await self._advance_one(
                uow, notes, state, ErrorThrown(job.token, code, message, variables)
            )
            for token, error in advanced.uncaught.get(state.id, []):
                await store.fail_job(uow.conn, state.id, token, error, engine.clock.now())

        await engine.transaction(work)

    async def resolve_incident(self, incident_id: uuid.UUID) -> None:
        engine = self._engine

        async def work(uow: UnitOfWork, notes: Notes) -> None:
            incident = await store.get_incident(uow.conn, incident_id)
            if incident is None:
                raise NotFound(
                    f"incident {incident_id} does not exist", reason="INCIDENT_NOT_FOUND"
                )
            state = await self._locked(uow.conn, incident.execution_id)
            if incident.resolved_at is not None or state.status in ENDED_STATUSES:
                raise FailedPrecondition(
                    "the incident is resolved, or its execution ended", reason="INCIDENT_CLOSED"
                )
            graph = (await engine.graphs(uow.conn, [(state.workflow_id, state.version)]))[
                (state.workflow_id, state.version)
            ]
            task = graph.nodes[incident.element_id].task
            await store.resolve_incident(
                uow.conn, incident, task.retries if task else 1, engine.clock.now()
            )
            if incident.from_job:
                notes.job_types.add(task.type if task else "")
            elif incident.token in state.tokens:
                await engine.advance(uow, notes, {state.id: [Reactivate(incident.token)]})

        await engine.transaction(work)

    async def erase_user(self, user_id: uuid.UUID) -> int:
        async def work(uow: UnitOfWork, notes: Notes) -> int:
            return await store.erase_user(uow.conn, user_id)

        return await self._engine.transaction(work)


async def record_failure(
    conn: asyncpg.Connection,
    job: store.JobRecord,
    *,
    retries: int,
    message: str,
    retry_backoff: timedelta | None,
    now: datetime,
) -> None:
    """A failed attempt: retried after a backoff while retries are left, else an incident."""
    if retries > 0:
        delay = retry_backoff if retry_backoff else backoff(job.failures + 1)
        await store.retry_job(
            conn,
            job.execution_id,
            job.token,
            retries=retries,
            available_at=now + delay,
            error=message,
        )
    else:
        await store.fail_job(conn, job.execution_id, job.token, message or "the job failed", now)


def _view_of(state: ExecutionState, run: Interpreter) -> store.ExecutionView:
    return store.ExecutionView(
        state.id,
        state.workflow_id,
        state.version,
        state.user_id,
        state.status,
        state.variables,
        state.current_nodes,
        state.started_at,
        state.completed_at,
        state.error_message,
        [(h.element, h.type, h.state, h.at) for h in run.step.history],
        [],
    )


def _execution_not_found(execution_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"execution {execution_id} does not exist",
        reason="EXECUTION_NOT_FOUND",
        metadata={"execution_id": str(execution_id)},
    )


__all__ = ["ACTIVE_STATUSES", "Catalog", "Engine", "Executions"]
