"""Executions: starting (StartExecution, group-committed), reading, listing,
cancelling, publishing messages to them, erasing a user's."""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial

import asyncpg

from runtime import idempotency, tombstones
from runtime.database import UnitOfWork
from runtime.errors import AlreadyExists, FailedPrecondition, ServiceError
from runtime.group_commit import GroupCommit
from runtime.identity import current_caller
from runtime.isolation import write_apart
from services.workflows.domain import (
    ACTIVE,
    ENDED_STATUSES,
    HISTORY_LIMIT,
    ExecutionFilter,
    ExecutionView,
    HistoryStep,
    NewMessage,
    Published,
    Started,
    StartRequest,
    execution_not_found,
    publish_waves,
    workflow_not_found,
)
from services.workflows.interpreter import Interpreter
from services.workflows.state import Cancel, ExecutionState, MessageDelivered, Trigger
from services.workflows.step_rows import Notes
from services.workflows.stepper import Stepper, by_starter, new_state
from services.workflows.store import executions as store
from services.workflows.store import messages as message_store
from services.workflows.store.definitions import message_start_workflows
from services.workflows.store.executions import NewExecution, StartAsked, StartCheck
from services.workflows.store.locks import lock_users, lock_users_alone
from services.workflows.store.messages import Correlation

log = logging.getLogger(__name__)

# Starts written together: batches at a time (each holds a connection), their
# size, and the backlog that opens another lane (measured in bench/RESULTS.md:
# fewer, fuller batches beat many small ones).
START_LANES = 4
START_BATCH = 64
START_BACKLOG = 16
START_METHOD = "StartExecution"
# A start the batch leaves to a transaction of its own: its request_id was used,
# the user runs the workflow already, or another start in the batch is its twin.
ALONE = object()
Outcome = Started | uuid.UUID | object


def startable_version(check: StartCheck, request: StartRequest) -> str:
    """The version a start runs on, if its workflow may start for its user."""
    if check.found is None:
        raise workflow_not_found(request.workflow_id)
    if check.found.status != ACTIVE and request.version is None:
        raise FailedPrecondition(
            f"workflow {request.workflow_id} is {check.found.status}; only active workflows start",
            reason="WORKFLOW_NOT_ACTIVE",
            metadata={"status": check.found.status},
        )
    if check.erased:
        raise FailedPrecondition(f"user {request.user_id} was erased", reason="USER_ERASED")
    return request.version or check.found.version


class Executions:
    """Starting, reading, cancelling executions; messages; a user's erase."""

    def __init__(self, stepper: Stepper) -> None:
        self._stepper = stepper
        self._starts: GroupCommit[StartRequest, Outcome] = GroupCommit(
            self._start_together,
            name="StartExecution batch",
            tracer=stepper.context.tracer_provider.get_tracer(__name__),
            lanes=START_LANES,
            max_weight=START_BATCH,
            backlog_per_lane=START_BACKLOG,
        )

    # ------------------------------------------------------------ starts

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
            return await self._stepper.transaction(
                lambda uow, notes: self.start_batch(requests, uow, notes)
            )
        except (asyncpg.PostgresError, ServiceError) as error:
            # One start spoiled the batch (a request_id taken meanwhile, a user
            # service that did not answer, a value the database refused): each
            # start finds its own answer alone.
            log.info("a batch of %d starts runs alone: %s", len(requests), error)
            return [ALONE] * len(requests)

    async def _start_alone_now(self, request: StartRequest) -> Outcome:
        return await self._stepper.transaction(
            lambda uow, notes: self._start_alone(request, uow, notes)
        )

    async def start_batch(
        self, requests: Sequence[StartRequest], uow: UnitOfWork, notes: Notes
    ) -> list[Outcome | Exception]:
        """Starts written in the caller's transaction (a group commit's, a campaign
        page's): each start's execution, or ALONE for one already made under its
        request_id (or left to a transaction of its own), or why it cannot start."""
        stepper = self._stepper
        now = stepper.clock.now()
        await lock_users(uow.conn, [r.user_id for r in requests])
        checks = await store.start_checks(
            uow.conn,
            [
                StartAsked(r.workflow_id, r.user_id, r.key.request_id if r.key else None)
                for r in requests
            ],
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
                version = startable_version(check, request)
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
        advanced = await stepper.advance(uow, notes, {}, list(new.values()), attribute=by_starter)
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
        stepper, conn, key = self._stepper, uow.conn, request.key
        if key is not None and (stored := await idempotency.claim(conn, key)):
            return uuid.UUID(json.loads(stored)["execution_id"])
        await lock_users(conn, [request.user_id])
        asked = StartAsked(request.workflow_id, request.user_id, None)
        (check,) = await store.start_checks(conn, [asked], START_METHOD)
        version = startable_version(check, request)
        state = new_state(
            request.workflow_id,
            version,
            request.user_id,
            request.variables,
            stepper.clock.now(),
            actors=request.actors,
        )
        advanced = await stepper.advance(
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

    # ------------------------------------------------------------ reads

    async def get(self, execution_id: uuid.UUID) -> ExecutionView:
        found = await store.get_execution(self._stepper.context.pool, execution_id, HISTORY_LIMIT)
        if found is None:
            raise execution_not_found(execution_id)
        return found

    async def page(
        self, where: ExecutionFilter, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[ExecutionView]:
        return await store.list_executions(
            self._stepper.context.pool, where, cursor=cursor, limit=limit
        )

    # ------------------------------------------------------------ cancel

    async def cancel(self, execution_id: uuid.UUID) -> ExecutionView:
        async def work(uow: UnitOfWork, notes: Notes) -> None:
            state = await self._stepper.locked(uow.conn, execution_id)
            if state.status in ENDED_STATUSES:
                raise FailedPrecondition(
                    f"the execution is {state.status} already", reason="EXECUTION_ENDED"
                )
            await self._stepper.advance(
                uow, notes, {execution_id: [Cancel("cancelled through the API")]}
            )

        await self._stepper.transaction(work)
        return await self.get(execution_id)

    # ------------------------------------------------------------ messages

    async def publish(self, messages: Sequence[NewMessage]) -> list[Published]:
        """Each message's outcome as if it were published alone, in order. The
        messages go in waves of one per user, a transaction each: a user's first
        message is settled before the next one is matched."""
        results: dict[int, Published] = {}
        for wave in publish_waves([m.user_id for m in messages]):
            parts = await write_apart(wave, partial(self._publish_positions, messages))
            for part in parts:
                published = part.result or [Published(0, False, False, part.error)]
                results.update(zip(part.items, published, strict=True))
        return [results[n] for n in range(len(messages))]

    async def _publish_positions(
        self, messages: Sequence[NewMessage], positions: Sequence[int]
    ) -> list[Published]:
        return await self._stepper.transaction(
            partial(self._publish_wave, [messages[n] for n in positions])
        )

    async def _publish_wave(
        self, messages: list[NewMessage], uow: UnitOfWork, notes: Notes
    ) -> list[Published]:
        conn, now = uow.conn, self._stepper.clock.now()
        users = [m.user_id for m in messages]
        # Alone: a step of the user that subscribes meanwhile would otherwise
        # miss a message this publish buffers, and the publish miss the step.
        await lock_users_alone(conn, users)
        erased = await tombstones.erased_among(conn, users)
        live = [m for m in messages if m.user_id not in erased]
        keyed = [m for m in live if m.message_id]
        fresh = await message_store.record_message_ids(conn, keyed, now) if keyed else set()
        duplicates = {m.user_id for m in keyed if m.user_id not in fresh}
        going = [m for m in live if m.user_id not in duplicates]
        waiting = await message_store.subscribers(
            conn, [Correlation(m.user_id, m.name, m.correlation_key) for m in going]
        )
        starting = await message_start_workflows(conn, {m.name for m in going})
        publisher = current_caller().actors
        triggers: dict[uuid.UUID, list[Trigger]] = {}
        new: dict[uuid.UUID, list[NewExecution]] = defaultdict(list)
        for m in going:
            for subscriber in waiting.get(m.user_id, ()):
                triggers[subscriber.execution_id] = [
                    MessageDelivered(subscriber.token, subscriber.element_id, m.variables)
                ]
            for workflow_id, version in starting.get(m.name, ()):
                state = new_state(
                    workflow_id, version, m.user_id, dict(m.variables), now, actors=publisher
                )
                new[m.user_id].append(NewExecution(state, exclusive=True))
        advanced = await self._stepper.advance_request(
            uow, notes, triggers, [e for started in new.values() for e in started]
        )
        results, buffered = [], []
        for m in messages:
            if m.user_id in erased or m.user_id in duplicates:
                results.append(Published(0, False, m.user_id in duplicates))
                continue
            delivered = sum(
                1 for s in waiting.get(m.user_id, ()) if s.execution_id in advanced.runs
            )
            delivered += sum(
                1 for e in new.get(m.user_id, ()) if e.state.id not in advanced.conflicts
            )
            # Only a message no execution received waits for a later one.
            kept = not delivered and m.ttl > timedelta(0)
            if kept:
                buffered.append(m)
            results.append(Published(delivered, kept, False))
        if buffered:
            await message_store.buffer_messages(conn, buffered, now)
        return results

    # ------------------------------------------------------------ erase

    async def erase_user(self, user_id: uuid.UUID) -> int:
        """Deletes the user's executions and messages and keeps their tombstone."""

        async def work(uow: UnitOfWork, notes: Notes) -> int:
            return await store.erase_user(uow.conn, user_id)

        return await self._stepper.transaction(work)


def _view_of(state: ExecutionState, run: Interpreter) -> ExecutionView:
    """A new execution as its first step left it (its history is that step's)."""
    return ExecutionView(
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
        [HistoryStep(h.element, h.type, h.state, h.at) for h in run.step.history],
        [],
    )


def _start_reply(execution_id: uuid.UUID) -> bytes:
    return json.dumps({"execution_id": str(execution_id)}).encode()
