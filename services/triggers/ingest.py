"""Event ingestion: store, evaluate, and ask for what the events imply, in one
transaction per batch.

For a batch of events: the users they name are resolved with the users
service (one BatchGetUserProfiles per 1000 users; GetUser for emails), every
enabled trigger of each event's type is evaluated in Python against the
event, the user's profile and the attribute change it reports, and then one
transaction stores the new events (deduplicated by message_id), a
trigger execution per evaluation, the firings' workflow starts and signal
broadcasts (the starter sends them), and the outbox messages: the event as a
PublishMessage to the workflows service and as a `tracked.<type>` lifecycle
event to the metrics service. An event is acknowledged once that transaction committed.

Calls arriving while every lane is busy wait and are written together by the
next free lane (group commit, handlers.Ingestor): one users call and one
transaction serve many unary TrackEvent calls under load, and a lone call is
written at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from google.protobuf import struct_pb2

from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime import tombstones
from runtime.clients import GRPC_SERVICES
from runtime.clock import Clock
from runtime.database import UnitOfWork
from runtime.errors import InvalidArgument
from runtime.isolation import Part, refusal_text, refused_value, write_apart
from runtime.lifecycle_events import TRACKED_PREFIX, EventBatch, new_event_id
from runtime.outbox import Destination, MergedMessages
from runtime.pacing import Pacer
from runtime.server import ServiceContext
from runtime.structs import set_timestamp
from services.triggers import person_events, store
from services.triggers.domain import (
    INTERNAL_ERROR,
    INVALID_EVENT,
    PRODUCER,
    USER_ERASED,
    USER_NOT_FOUND,
    CompiledTrigger,
    EntryClaims,
    EntryDecision,
    Event,
    Outcome,
    Refusal,
    TriggerSet,
    compile_trigger,
    context_of,
)
from services.triggers.peers import Users

log = logging.getLogger(__name__)


def _refused_messages(answer: bytes) -> dict[int, str]:
    """The messages a PublishMessages answer says were not published."""
    results = workflows_pb2.PublishMessagesResponse.FromString(answer).results
    return {
        position: f"{result.error.reason}: {result.error.field}: {result.error.message}"
        for position, result in enumerate(results)
        if result.HasField("error")
    }


# Items of an outbox message: a full call's worth (the callees' limits).
PUBLISHED_PER_MESSAGE = 500
RECORDED_PER_MESSAGE = 1000
PUBLISH_MESSAGES = "workflows.publish_messages"
RECORD_USER_EVENTS = "users.record_user_events"
DESTINATIONS = {
    # Each payload is a RecordUserEventsRequest of a batch's events (what
    # conditions' event leaves read, docs/architecture.md, "Who keeps what people did").
    RECORD_USER_EVENTS: Destination(
        "users",
        f"/{GRPC_SERVICES['users']}/RecordUserEvents",
        mergeable=True,
        max_batch=RECORDED_PER_MESSAGE,
    ),
    # Each payload is a PublishMessagesRequest of a batch's events; the relay
    # sends many as one request.
    PUBLISH_MESSAGES: Destination(
        "workflows",
        f"/{GRPC_SERVICES['workflows']}/PublishMessages",
        mergeable=True,
        max_batch=PUBLISHED_PER_MESSAGE,
        refused_items=_refused_messages,
    ),
}
# Events per transaction.
BATCH_EVENTS = 1000


class TriggerCache:
    """The enabled triggers, compiled, kept in memory by each replica.

    Every change of the `triggers` table bumps `trigger_catalog.version` (a
    statement trigger, whatever statement made the change). Each ingest
    transaction reads the version (in the statement it starts with) and the set
    is reloaded when it moved: a change applies to the next batch on every
    replica, with no message between replicas and no NOTIFY (which serialises
    commits)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._current = TriggerSet(-1, ())
        self._reloading = asyncio.Lock()

    async def at(self, version: int) -> TriggerSet:
        """The enabled triggers at version `version` of the table (or a later one)."""
        if version > self._current.version:
            async with self._reloading:
                if version > self._current.version:
                    self._current = await self._load()
        return self._current

    async def _load(self) -> TriggerSet:
        version, triggers = await store.enabled_triggers(self._pool)
        compiled = []
        for trigger in triggers:
            try:
                compiled.append((trigger.event_type, compile_trigger(trigger)))
            except InvalidArgument as error:
                # Only a condition written around the API gets here: one bad trigger
                # must not stop the events of all the others.
                log.error("trigger %s is skipped, its condition is invalid: %s", trigger.id, error)
        return TriggerSet(version, compiled)


def message_id_for_workflows(event: Event) -> str:
    """The PublishMessage message_id of an event: a retry is a duplicate there too."""
    return f"triggers:{event.message_id}"


def _event_variable(event: Event) -> struct_pb2.Struct:
    """What an execution sees of the event: the variable `event`."""
    variable = struct_pb2.Struct()
    variable.fields["type"].string_value = event.event_type
    variable.fields["message_id"].string_value = event.message_id
    variable.fields["time"].string_value = event.event_time.isoformat()
    variable.fields["data"].struct_value.CopyFrom(event.data_struct)
    return variable


def _action_request(
    trigger: CompiledTrigger, user_id: uuid.UUID, variable: struct_pb2.Struct, request_id: str
) -> bytes:
    """The call a firing makes, idempotent on the trigger execution's id:
    StartExecution of the trigger's workflow, or BroadcastSignal of its signal
    for the user alone (a firing is one user's). Both carry the same variables."""
    action = trigger.action
    request: workflows_pb2.StartExecutionRequest | workflows_pb2.BroadcastSignalRequest
    if action.signal_name is not None:
        request = workflows_pb2.BroadcastSignalRequest(
            signal_name=action.signal_name,
            user_ids=[str(user_id)],
            request_id=request_id,
            restrict_to_users=True,
        )
    else:
        request = workflows_pb2.StartExecutionRequest(
            workflow_id=str(action.workflow_id),
            user_id=str(user_id),
            request_id=request_id,
            conflict_policy=workflows_pb2.CONFLICT_POLICY_FAIL,
        )
    request.variables.fields["event"].struct_value.CopyFrom(variable)
    request.variables.fields["trigger_id"].string_value = str(trigger.id)
    return request.SerializeToString()


def _publish_request(event: Event, variable: struct_pb2.Struct, ttl: timedelta) -> bytes:
    """The event as a message to the workflows service: a one-message request,
    which is also the message as an item of a merged request (runtime.outbox)."""
    batch = workflows_pb2.PublishMessagesRequest()
    message = batch.messages.add(
        name=event.event_type,
        correlation_key=str(event.user_id),
        message_id=message_id_for_workflows(event),
    )
    message.variables.fields["event"].struct_value.CopyFrom(variable)
    if ttl:
        message.time_to_live.FromTimedelta(ttl)
    return batch.SerializeToString()


@dataclass
class _Evaluated:
    """A batch ready to store: its columns, and what to publish per event."""

    events: store.EventRows = field(default_factory=lambda: store.EventRows([], [], [], [], []))
    evaluations: store.EvaluationRows = field(
        default_factory=lambda: store.EvaluationRows([], [], [], [], [], [], [], [], [], [])
    )
    variables: dict[str, struct_pb2.Struct] = field(default_factory=dict)

    def add_event(self, event: Event, user_id: uuid.UUID) -> None:
        rows = self.events
        rows.message_ids.append(event.message_id)
        rows.user_ids.append(user_id)
        rows.event_types.append(event.event_type)
        rows.data.append(event.data_json)
        rows.event_times.append(event.event_time)

    def add_evaluation(
        self,
        event: Event,
        trigger: CompiledTrigger,
        execution_id: str,
        *,
        met: bool,
        decision: EntryDecision,
        request: bytes | None,
    ) -> None:
        rows = self.evaluations
        rows.message_ids.append(event.message_id)
        rows.trigger_ids.append(trigger.id)
        rows.ids.append(execution_id)
        rows.met.append(met)
        rows.claims.append(decision.claim)
        rows.skips.append(decision.skip)
        rows.requests.append(request)
        rows.signals.append(trigger.action.signal_name)
        rows.traceparents.append(event.traceparent)
        rows.actors.append(event.actors)


class IngestPipeline:
    """The use case: one batch of valid events, stored and evaluated."""

    def __init__(
        self,
        context: ServiceContext,
        cache: TriggerCache,
        users: Users,
        *,
        clock: Clock,
        message_ttl: timedelta,
        event_retention: timedelta,
        on_starts: Callable[[], None],
    ) -> None:
        self._context = context
        self._cache = cache
        self._users = users
        self._clock = clock
        self._ttl = message_ttl
        self._event_retention = event_retention
        self._on_starts = on_starts

    async def ingest(self, events: Sequence[Event]) -> list[Outcome]:
        """An outcome per event, in order. An event the store cannot take (the
        database refuses a value of it) is refused alone (runtime.isolation)."""
        outcomes: list[Outcome | None] = [None] * len(events)
        await self._resolve_users(events, outcomes)
        first: dict[str, int] = {}
        ready: list[Event] = []
        for position, event in enumerate(events):
            if outcomes[position] is not None:
                continue
            if first.setdefault(event.message_id, position) != position:
                outcomes[position] = Outcome(event.user_id, duplicate=True)
            else:
                ready.append(event)
        parts = await write_apart(ready, self._store) if ready else []
        if any(part.result is not None and part.result.starts for part in parts):
            self._on_starts()
        for part in parts:
            for event in part.items:
                outcomes[first[event.message_id]] = _outcome(event, part)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(events), "an event was left without an outcome"
        return done

    async def _store(self, events: Sequence[Event]) -> store.Recorded:
        """Evaluates and stores events in one transaction."""
        now = self._clock.now()
        async with self._context.unit_of_work() as uow:
            triggers = await self._cache.at(await store.lock_for_ingest(uow.conn))
            leaves = triggers.event_leaves({event.event_type for event in events})
            history = (
                await person_events.load(
                    uow.conn, self._users, events, leaves, now=now, retention=self._event_retention
                )
                if leaves
                else None
            )
            batch = await self._evaluate(events, triggers, now, history)
            recorded = await store.record(uow.conn, batch.events, batch.evaluations, now)
            accepted = [event for event in events if event.message_id in recorded.accepted]
            self._publish(uow, accepted, batch.variables)
        return recorded

    async def _resolve_users(self, events: Sequence[Event], outcomes: list[Outcome | None]) -> None:
        """Sets each event's user id and profile; refuses events of unknown or
        erased users."""
        emails = [event.email for event in events if event.email is not None]
        if emails:
            ids = await self._users.ids_by_email(emails)
            for position, event in enumerate(events):
                if event.email is not None:
                    event.user_id = ids.get(event.email.lower())
                    if event.user_id is None:
                        outcomes[position] = Outcome(
                            refusal=Refusal("email", "no user has this email", USER_NOT_FOUND)
                        )
        wanted = {event.user_id for event in events if event.user_id is not None}
        profiles = await self._users.profiles(wanted)
        missing = wanted - profiles.keys()
        erased = (
            await tombstones.erased_among(self._context.pool, list(missing)) if missing else set()
        )
        for position, event in enumerate(events):
            if event.user_id is None:
                continue
            event.user = profiles.get(event.user_id)
            if event.user_id in erased:
                outcomes[position] = Outcome(refusal=_erased())
            elif event.user is None:
                outcomes[position] = Outcome(
                    refusal=Refusal(
                        "user_id", f"user {event.user_id} does not exist", USER_NOT_FOUND
                    )
                )

    async def _evaluate(
        self,
        events: Iterable[Event],
        triggers: TriggerSet,
        now: datetime,
        history: person_events.PersonEvents | None = None,
    ) -> _Evaluated:
        """Every matching trigger against every event, with its re-entry decision
        (EntryClaims); `history`: what event leaves read. A batch of many triggers
        takes a second: it lets the event loop in as it goes."""
        batch, pacer, claims = _Evaluated(), Pacer(), EntryClaims()
        for event in events:
            user_id = event.user_id
            assert user_id is not None
            batch.add_event(event, user_id)
            if history is not None:
                history.add(event, now)
            variable = _event_variable(event)
            batch.variables[event.message_id] = variable
            matching = triggers.matching(event.event_type)
            await pacer.done(1 + len(matching))
            if not matching:
                continue
            context = context_of(event, now, history.of(user_id) if history else None)
            for trigger in matching:
                met = trigger.holds(context)
                decision = claims.decide(trigger, user_id, met)
                execution_id = new_event_id()
                request = None
                if met and decision.skip is None:
                    request = _action_request(trigger, user_id, variable, execution_id)
                batch.add_evaluation(
                    event, trigger, execution_id, met=met, decision=decision, request=request
                )
        return batch

    def _publish(
        self, uow: UnitOfWork, events: Sequence[Event], variables: dict[str, struct_pb2.Struct]
    ) -> None:
        """The messages the stored events imply, in the transaction that stores them,
        each on behalf of its event's caller (a batch holds many calls' events)."""
        lifecycle = EventBatch(PRODUCER)
        published = MergedMessages(PUBLISH_MESSAGES, PUBLISHED_PER_MESSAGE)
        recorded = MergedMessages(RECORD_USER_EVENTS, RECORDED_PER_MESSAGE)
        for event in events:
            published.add(
                _publish_request(event, variables[event.message_id], self._ttl), event.actors
            )
            if event.tracked and event.user is not None:
                recorded.add(_user_event_request(event), event.actors)
                data = struct_pb2.Struct()
                data.CopyFrom(event.data_struct)
                data.fields["message_id"].string_value = event.message_id
                lifecycle.add(
                    f"{TRACKED_PREFIX}{event.event_type}",
                    event.event_time,
                    user_id=event.user_id,
                    stage=event.user.stage,
                    data=data,
                    actors=event.actors,
                )
        uow.messages.extend((*published, *recorded))
        lifecycle.publish(uow)


def _user_event_request(event: Event) -> bytes:
    """The event for the users service, which keeps each person's events: a
    one-event request, which is also the event as an item of a merged request."""
    request = users_pb2.RecordUserEventsRequest()
    user_event = request.events.add(
        message_id=event.message_id,
        user_id=str(event.user_id),
        event_type=event.event_type,
        data_json=event.data_json,
    )
    set_timestamp(user_event.occur_time, event.event_time)
    return request.SerializeToString()


def _erased() -> Refusal:
    return Refusal("user_id", "the user was erased", USER_ERASED)


def _outcome(event: Event, part: Part[Event, store.Recorded]) -> Outcome:
    recorded = part.result
    if recorded is None:
        return Outcome(refusal=_unstorable(part.error))
    if event.message_id in recorded.accepted:
        return Outcome(event.user_id)
    if event.user_id in recorded.erased:
        return Outcome(refusal=_erased())
    return Outcome(event.user_id, duplicate=True)


def _unstorable(error: Exception | None) -> Refusal:
    assert error is not None
    reason = INVALID_EVENT if refused_value(error) is not None else INTERNAL_ERROR
    return Refusal("event", refusal_text(error), reason, error)
