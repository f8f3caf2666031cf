"""The triggers service's use cases: the triggers themselves, the trigger
executions, a user's erase, the events tracked (Ingestor, which batches the
calls for the pipeline of ingest.py) and the workflow starts and signal
broadcasts firings ask for. Each runs in one unit of work; a change of
`triggers` reaches every replica's cache through the version of the table
(ingest.TriggerCache).

The starts are an outbox whose answers matter: StartExecution returns the
execution's id (`trigger_executions.workflow_execution_id`), or refuses for a
reason the firing records (`skip_reason`: the workflow is not active, was
deleted, the user runs it already, was erased); a broadcast returns the tokens
it reached and the executions it started (`signal_*`). A start is claimed
under a lease with FOR UPDATE SKIP LOCKED, so replicas share the work and a
crashed one's starts come back; a start that failed is retried with backoff.
The settled firing is recorded as a `trigger.fired` lifecycle event attributed to
the actors of the call that tracked the event and to the triggers service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import trace

from runtime import idempotency
from runtime.errors import NotFound
from runtime.group_commit import GroupCommit
from runtime.idempotency import RequestKey
from runtime.identity import acting_for
from runtime.lifecycle_events import EventBatch
from runtime.server import ServiceContext
from runtime.worker import doubling
from services.triggers import store
from services.triggers.domain import (
    PRODUCER,
    Event,
    Outcome,
    PendingStart,
    Settled,
    Trigger,
    TriggerExecution,
    TriggerFields,
    TriggerFilter,
)
from services.triggers.ingest import BATCH_EVENTS, IngestPipeline
from services.triggers.peers import Unreachable, Workflows

log = logging.getLogger(__name__)

# The pause before a failed start's first retry; it doubles with each attempt.
FIRST_RETRY_SECONDS = 0.5


def _not_found(trigger_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"trigger {trigger_id} does not exist",
        reason="TRIGGER_NOT_FOUND",
        metadata={"trigger_id": str(trigger_id)},
    )


class TriggerDirectory:
    """Triggers: create, read, change, enable, disable, delete."""

    def __init__(self, context: ServiceContext, workflows: Workflows) -> None:
        self._context = context
        self._workflows = workflows

    async def create(self, fields: TriggerFields, key: RequestKey | None) -> Trigger:
        await self._check_action(fields)
        async with self._context.unit_of_work() as uow:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)) is not None:
                trigger_id = uuid.UUID(json.loads(stored)["trigger_id"])
                replayed = await store.get_trigger(uow.conn, trigger_id)
                if replayed is None:
                    raise NotFound(
                        f"the trigger this request created ({trigger_id}) was deleted since",
                        reason="TRIGGER_DELETED",
                    )
                return replayed
            trigger = await store.insert_trigger(uow.conn, fields)
            if key is not None:
                reply = json.dumps({"trigger_id": str(trigger.id)}).encode()
                await idempotency.store(uow.conn, key, reply)
            return trigger

    async def _check_action(self, fields: TriggerFields) -> None:
        """A workflow to start must exist; a signal may have no listener yet."""
        if fields.action is not None and fields.action.workflow_id is not None:
            await self._workflows.check_startable(fields.action.workflow_id, "trigger.workflow_id")

    async def get(self, trigger_id: uuid.UUID) -> Trigger:
        trigger = await store.get_trigger(self._context.pool, trigger_id)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def page(
        self, where: TriggerFilter, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Trigger]:
        return await store.list_triggers(self._context.pool, where, cursor, limit)

    async def update(self, trigger_id: uuid.UUID, fields: TriggerFields) -> Trigger:
        await self._check_action(fields)
        async with self._context.unit_of_work() as uow:
            trigger = await store.update_trigger(uow.conn, trigger_id, fields)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def set_enabled(self, trigger_id: uuid.UUID, enabled: bool) -> Trigger:
        async with self._context.unit_of_work() as uow:
            trigger = await store.set_enabled(uow.conn, trigger_id, enabled)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def delete(self, trigger_id: uuid.UUID) -> None:
        async with self._context.unit_of_work() as uow:
            if not await store.delete_trigger(uow.conn, trigger_id):
                raise _not_found(trigger_id)


class TriggerHistory:
    """The trigger executions, and a user's erase."""

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def page(
        self,
        trigger_id: uuid.UUID | None,
        user_id: uuid.UUID | None,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[TriggerExecution]:
        return await store.list_executions(self._context.pool, trigger_id, user_id, cursor, limit)

    async def erase_user(self, user_id: uuid.UUID) -> int:
        """A user's erase (docs/schema.md, "Erasing a user"): their trigger
        executions, events and waiting starts go; later events are refused."""
        async with self._context.unit_of_work() as uow:
            return await store.erase_user(uow.conn, user_id)


@dataclass(frozen=True)
class SentStarts:
    """A round of starts: how many were claimed, and whether the workflows
    service could not be reached for some of them."""

    claimed: int
    unreachable: bool


class WorkflowStarts:
    """Sends the workflow starts and signal broadcasts that firings wrote to
    `pending_starts` and writes the answers back into their trigger executions."""

    def __init__(
        self,
        context: ServiceContext,
        workflows: Workflows,
        *,
        lease_seconds: float = 30.0,
        max_backoff_seconds: float = 60.0,
    ) -> None:
        self._context = context
        self._workflows = workflows
        self._lease = lease_seconds
        self._max_backoff = max_backoff_seconds

    async def send_due(self, limit: int) -> SentStarts:
        """Claims up to `limit` due starts, sends them, records the answers."""
        starts = await store.claim_starts(self._context.pool, limit, self._lease)
        answers = await self._workflows.start(starts) if starts else []
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
        unreachable = any(isinstance(answer, Unreachable) for answer in answers)
        return SentStarts(len(starts), unreachable)

    async def _retry_later(self, failed: Sequence[tuple[PendingStart, str]]) -> None:
        delays = [
            doubling(start.attempts, FIRST_RETRY_SECONDS, self._max_backoff) for start, _ in failed
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
        data: dict[str, str | int] = {
            "trigger_id": str(start.trigger_id),
            "event_type": start.event_type,
        }
        if answer.workflow_execution_id is not None:
            data["workflow_execution_id"] = str(answer.workflow_execution_id)
        if answer.skip_reason is not None:
            data["skip_reason"] = answer.skip_reason
        if answer.signal is not None:
            data["signal_name"] = answer.signal.name
            data["delivered_count"] = answer.signal.delivered
            data["started_count"] = answer.signal.started
        events.add(
            "trigger.fired",
            start.executed_at,
            user_id=start.user_id,
            data=data,
            workflow_execution_id=answer.workflow_execution_id,
            actors=acting_for(PRODUCER, start.actors).actors,
        )
    return events


class Ingestor:
    """Runs the pipeline on at most `lanes` batches at a time; calls that arrive
    meanwhile are queued and batched together (up to BATCH_EVENTS events).

    A second lane opens only for a backlog of half a batch or more: small calls
    are cheaper written together by one lane, while big ones gain from one lane
    evaluating while another waits for the database."""

    def __init__(self, pipeline: IngestPipeline, lanes: int, tracer: trace.Tracer) -> None:
        self._pipeline = pipeline
        self._batches: GroupCommit[list[Event], list[Outcome]] = GroupCommit(
            self._write,
            name="TrackEvents batch",
            tracer=tracer,
            lanes=lanes,
            max_weight=BATCH_EVENTS,
            backlog_per_lane=BATCH_EVENTS // 2,
            weight=len,
        )

    async def track(self, events: Sequence[Event]) -> list[Outcome]:
        chunks = [
            list(events[start : start + BATCH_EVENTS])
            for start in range(0, len(events), BATCH_EVENTS)
        ]
        results = await asyncio.gather(*(self._batches.submit(chunk) for chunk in chunks))
        return [outcome for result in results for outcome in result]

    async def _write(self, calls: Sequence[list[Event]]) -> list[list[Outcome]]:
        outcomes = await self._pipeline.ingest([event for events in calls for event in events])
        answers, start = [], 0
        for events in calls:
            answers.append(outcomes[start : start + len(events)])
            start += len(events)
        return answers
