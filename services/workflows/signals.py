"""BroadcastSignal: a signal to every token waiting for it, and the start of
the workflows a signal start event of that name starts, for the users named.

One statement finds the subscribers (signal_subscriptions, by name); they
are stepped in batches of executions, a transaction each, through the
stepper, waiting for the row locks (a cancel that commits first leaves
nothing to deliver to). The starts, the subscribers' snapshot and the
request_id are one transaction: a repeated request_id answers what the first
call did and does nothing again, once that call delivered to every batch; a
call that stopped before (the service stopped, say) is only half-way, and its
retry delivers again to the tokens still waiting for the signal.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from runtime import idempotency, tombstones
from runtime.chains import Chain
from runtime.database import UnitOfWork
from runtime.idempotency import RequestKey
from services.workflows.domain import ENDED_STATUSES
from services.workflows.interpreter import VariablesTooLarge
from services.workflows.state import MessageDelivered, Trigger
from services.workflows.step_rows import Notes
from services.workflows.stepper import Stepper, new_state
from services.workflows.store import executions as execution_store
from services.workflows.store import signals as signal_store
from services.workflows.store.executions import NewExecution
from services.workflows.store.locks import lock_users
from services.workflows.store.signals import SignalSubscriber

log = logging.getLogger(__name__)

METHOD = "BroadcastSignal"
MAX_USERS = 1000
# Executions stepped per transaction.
BATCH = 500


@dataclass(frozen=True)
class SignalBroadcast:
    name: str
    variables: dict[str, Any]
    user_ids: Sequence[uuid.UUID]
    key: RequestKey | None
    actors: Chain
    # Only the executions of `user_ids` get it (a trigger's signal for its event's user).
    restrict_to_users: bool = False


@dataclass(frozen=True)
class Broadcasted:
    delivered: int
    started: int
    start_workflows: int
    # False while the call delivers: its answer is stored before (with its starts).
    complete: bool = True

    def encoded(self) -> bytes:
        fields = [self.delivered, self.started, self.start_workflows, self.complete]
        return json.dumps(fields).encode()

    @classmethod
    def decoded(cls, data: bytes) -> Broadcasted:
        return cls(*json.loads(data))


class Signals:
    """Broadcasting signals."""

    def __init__(self, stepper: Stepper, batch: int = BATCH) -> None:
        self._stepper = stepper
        self._batch = batch

    async def broadcast(self, request: SignalBroadcast) -> Broadcasted:
        begun = await self._stepper.transaction(partial(self._begin, request))
        if isinstance(begun, Broadcasted):
            return begun
        started, start_workflows, subscribers = begun
        by_execution: dict[uuid.UUID, list[SignalSubscriber]] = {}
        for subscriber in subscribers:
            by_execution.setdefault(subscriber.execution_id, []).append(subscriber)
        ids = list(by_execution)
        delivered = 0
        for first in range(0, len(ids), self._batch):
            chunk = {i: by_execution[i] for i in ids[first : first + self._batch]}
            delivered += await self._deliver(chunk, request.variables)
        answer = Broadcasted(delivered, started, start_workflows)
        if request.key is not None:
            key = request.key

            async def remember(uow: UnitOfWork, notes: Notes) -> None:
                await idempotency.store(uow.conn, key, answer.encoded())

            await self._stepper.transaction(remember)
        return answer

    async def _begin(
        self, request: SignalBroadcast, uow: UnitOfWork, notes: Notes
    ) -> Broadcasted | tuple[int, int, list[SignalSubscriber]]:
        conn, stepper = uow.conn, self._stepper
        subscribers = partial(
            signal_store.subscribers,
            conn,
            [request.name],
            request.user_ids if request.restrict_to_users else None,
        )
        if request.key is not None and (stored := await idempotency.claim(conn, request.key)):
            earlier = Broadcasted.decoded(stored)
            if earlier.complete:
                return earlier
            return earlier.started, earlier.start_workflows, await subscribers()
        waiting = await subscribers()  # before the starts: theirs are not reached
        workflows = (await signal_store.signal_start_workflows(conn, [request.name])).get(
            request.name, []
        )
        started = 0
        if workflows and request.user_ids:
            await lock_users(conn, request.user_ids)
            erased = await tombstones.erased_among(conn, list(request.user_ids))
            now = stepper.clock.now()
            new = [
                NewExecution(
                    new_state(
                        workflow_id,
                        version,
                        user_id,
                        dict(request.variables),
                        now,
                        actors=request.actors,
                    ),
                    exclusive=True,
                )
                for workflow_id, version in workflows
                for user_id in request.user_ids
                if user_id not in erased
            ]
            advanced = await stepper.advance_request(uow, notes, {}, new)
            started = len(new) - len(advanced.conflicts)
        if request.key is not None:
            provisional = Broadcasted(0, started, len(workflows), complete=False)
            await idempotency.store(conn, request.key, provisional.encoded())
        return started, len(workflows), waiting

    async def _deliver(
        self, chunk: dict[uuid.UUID, list[SignalSubscriber]], variables: dict[str, Any]
    ) -> int:
        """Steps a batch of subscribers' executions; how many tokens got the signal.
        A batch in which an execution's variables would grow too large is
        stepped one execution at a time, and that one does not get it."""
        try:
            return await self._stepper.transaction(partial(self._step, chunk, variables))
        except VariablesTooLarge:
            if len(chunk) == 1:
                (execution_id,) = chunk
                log.info("signal not delivered to %s: variables too large", execution_id)
                return 0
        delivered = 0
        for execution_id, subscribers in chunk.items():
            delivered += await self._deliver({execution_id: subscribers}, variables)
        return delivered

    async def _step(
        self,
        chunk: dict[uuid.UUID, list[SignalSubscriber]],
        variables: dict[str, Any],
        uow: UnitOfWork,
        notes: Notes,
    ) -> int:
        states = await execution_store.lock_executions(uow.conn, list(chunk))
        triggers: dict[uuid.UUID, list[Trigger]] = {}
        delivered = 0
        for execution_id, subscribers in chunk.items():
            state = states.get(execution_id)
            if state is None or state.status in ENDED_STATUSES:
                continue
            alive = [s for s in subscribers if s.token in state.tokens]
            if alive:
                triggers[execution_id] = [
                    MessageDelivered(s.token, s.element_id, variables) for s in alive
                ]
                delivered += len(alive)
        if triggers:
            await self._stepper.advance(uow, notes, triggers)
        return delivered
