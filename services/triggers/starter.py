"""The starter: sends the workflow starts that firings wrote to `pending_starts`
and writes the answers back into their trigger executions.

It is an outbox whose answers matter: StartExecution returns the execution's
id (`trigger_executions.workflow_execution_id`), or refuses for a reason the
firing records (`skip_reason`: the workflow is not active, was deleted, the
user runs it already, was erased). A start is claimed under a lease with
FOR UPDATE SKIP LOCKED, so replicas share the work and a crashed one's starts
come back; while the workflows service is down each start is retried with
backoff, and the starter itself rests, backing off, rather than trying on
every ingest that wakes it.
Its request_id is the trigger execution's id, so a retry after a lost answer
returns the execution the first attempt started: never two. The call runs in
the trace of the event that caused it, on behalf of the actors of the call
that tracked the event, and the settled firing is recorded as a
`trigger.fired` lifecycle event attributed to them and to the triggers service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from typing import cast

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lifecycle.workflows.v1 import workflows_pb2
from runtime.clients import GRPC_SERVICES
from runtime.identity import acting_for, calling_as
from runtime.lifecycle_events import EventBatch
from runtime.server import ServiceContext
from runtime.telemetry import joined
from services.triggers import store
from services.triggers.domain import PRODUCER
from services.triggers.store import PendingStart, Settled

log = logging.getLogger(__name__)

START_EXECUTION = f"/{GRPC_SERVICES['workflows']}/StartExecution"
# The workflows service's answers about the start itself: retrying cannot change them.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


class Unreachable(str):
    """Why a start failed, when the workflows service could not be reached."""


def _refusal(error: grpc.aio.AioRpcError) -> str:
    """The reason the workflows service gave (its ErrorInfo), with its message."""
    reason = error.code().name
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return f"{reason}: {error.details()}"


class Starter:
    name = "workflow-starter"

    def __init__(
        self,
        context: ServiceContext,
        *,
        poll_interval: float,
        batch_size: int = 200,
        lease_seconds: float = 30.0,
        max_backoff_seconds: float = 60.0,
    ) -> None:
        self._context = context
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._lease = lease_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = asyncio.Event()
        # Rounds in a row that found the workflows service unreachable: while
        # it is, the starter rests, backing off, instead of trying on every
        # ingest that wakes it (each round a claim and a reschedule).
        self._down_rounds = 0

    def wake(self) -> None:
        """Asks for a round now (called when an ingest committed starts)."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            # Cleared before the round: a wake-up during it makes the next one at once.
            self._wake.clear()
            try:
                claimed = await self.start_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("the starter could not reach the database: %s", error)
                claimed = 0
            if self._down_rounds:
                await self._rest(stopping)
            elif claimed < self._batch_size:
                await self._idle(stopping)

    async def _idle(self, stopping: asyncio.Event) -> None:
        """Until a wake-up, the stop, or the next poll."""
        waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stopping.wait())]
        await asyncio.wait(waits, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()

    async def _rest(self, stopping: asyncio.Event) -> None:
        """Until the backoff of the workflows service's outage ends, or the stop."""
        pause = min(self._max_backoff, 0.5 * 2 ** (self._down_rounds - 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), pause * random.uniform(0.8, 1.2))

    async def start_once(self) -> int:
        """One round: claim due starts, send them, record the answers. Returns the
        starts claimed."""
        starts = await store.claim_starts(self._context.pool, self._batch_size, self._lease)
        answers = await asyncio.gather(*(self._start(start) for start in starts))
        if answers:
            unreachable = any(isinstance(answer, Unreachable) for answer in answers)
            self._down_rounds = self._down_rounds + 1 if unreachable else 0
        settled = [answer for answer in answers if isinstance(answer, Settled)]
        if settled:
            async with self._context.unit_of_work() as uow:
                await store.settle_starts(uow.conn, settled)
                _fired(settled).publish(uow)
        failed = [
            (start, answer)
            for start, answer in zip(starts, answers, strict=True)
            if isinstance(answer, str)
        ]
        if failed:
            await self._retry_later(failed)
        return len(starts)

    async def _start(self, start: PendingStart) -> Settled | str:
        """The answer to one start, or why it should be tried again."""
        call = self._context.clients.channel("workflows").unary_unary(
            START_EXECUTION,
            request_serializer=None,
            response_deserializer=workflows_pb2.StartExecutionResponse.FromString,
        )
        try:
            with joined(start.traceparent), calling_as(acting_for(PRODUCER, start.actors)):
                reply = await call(start.request, timeout=self._context.clients.timeout())
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                return Settled(start, skip_reason=_refusal(error))
            why = f"{error.code().name}: {error.details()}"
            return Unreachable(why) if error.code() == grpc.StatusCode.UNAVAILABLE else why
        return Settled(start, workflow_execution_id=uuid.UUID(reply.execution.id))

    async def _retry_later(self, failed: Sequence[tuple[PendingStart, str]]) -> None:
        delays = [
            min(self._max_backoff, 0.5 * 2 ** (start.attempts - 1)) * random.uniform(0.8, 1.2)
            for start, _ in failed
        ]
        log.warning(
            "%d workflow starts failed (attempt %d, next in %.1fs): %s",
            len(failed),
            failed[0][0].attempts,
            delays[0],
            failed[0][1],
        )
        await store.reschedule_starts(
            self._context.pool,
            [start.trigger_execution_id for start, _ in failed],
            delays,
            [error for _, error in failed],
        )


def _fired(settled: Sequence[Settled]) -> EventBatch:
    """trigger.fired for each firing the workflows service answered."""
    events = EventBatch(PRODUCER)
    for answer in settled:
        start = answer.start
        data: dict[str, str] = {"trigger_id": str(start.trigger_id), "event_type": start.event_type}
        if answer.workflow_execution_id is not None:
            data["workflow_execution_id"] = str(answer.workflow_execution_id)
        if answer.skip_reason is not None:
            data["skip_reason"] = answer.skip_reason
        events.add(
            "trigger.fired",
            start.executed_at,
            user_id=start.user_id,
            data=data,
            workflow_execution_id=answer.workflow_execution_id,
            actors=acting_for(PRODUCER, start.actors).actors,
        )
    return events
