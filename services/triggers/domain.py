"""The rules of triggers and events: what a valid event type, pattern, event and
re-entry policy are, which triggers an event concerns, and what a condition
reads of an event. No I/O here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from google.protobuf import struct_pb2

from conditions import (
    TRIGGER,
    AttributeChanges,
    Condition,
    Context,
    Evaluator,
    EventLeaf,
    PersonEvent,
    UserProfile,
    parse_condition,
)
from runtime.chains import Chain
from runtime.errors import Violations
from runtime.lifecycle_events import EVENT_TYPES, TRACKED_PREFIX
from runtime.structs import JsonObject

PRODUCER = "triggers"

# Lower-case dotted names: "signup", "billing.invoice_paid".
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
# The lifecycle log stores "tracked.<type>" in 100 characters.
MAX_EVENT_TYPE_LENGTH = 100 - len(TRACKED_PREFIX)
PREFIX_WILDCARD = ".*"
MAX_DATA_BYTES = 32 * 1024
MAX_MESSAGE_ID_LENGTH = 200
# Clocks drift; an event stamped further ahead than this is a bug of its sender.
MAX_FUTURE = timedelta(days=1)
MAX_PERIOD = timedelta(days=3650)

EVERY_TIME = "every_time"
ONCE_PER_USER = "once_per_user"
ONCE_PER_PERIOD = "once_per_period"

# Why a trigger whose condition held started nothing (besides the reasons the
# workflows service gives when it refuses a start).
REENTRY_LIMIT = "REENTRY_LIMIT"
# Why an event was refused (TrackEvents' error reasons).
INVALID_EVENT = "INVALID_EVENT"
INTERNAL_ERROR = "INTERNAL"
USER_NOT_FOUND = "USER_NOT_FOUND"
USER_ERASED = "USER_ERASED"


@dataclass(frozen=True)
class Reentry:
    """How often one user may fire a trigger."""

    mode: str = EVERY_TIME
    # Only for ONCE_PER_PERIOD.
    period: timedelta | None = None

    @property
    def limited(self) -> bool:
        return self.mode != EVERY_TIME


@dataclass(frozen=True)
class Action:
    """What a firing does, exactly one of: start a workflow for the event's
    user, or broadcast a signal for them."""

    workflow_id: uuid.UUID | None = None
    signal_name: str | None = None


@dataclass(frozen=True)
class Trigger:
    id: uuid.UUID
    name: str
    event_type: str
    # As authored; {} always holds.
    conditions: JsonObject
    action: Action
    enabled: bool
    reentry: Reentry
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TriggerFields:
    """What a create sets, or an update changes (None: left as it is)."""

    name: str | None = None
    event_type: str | None = None
    conditions: JsonObject | None = None
    action: Action | None = None
    reentry: Reentry | None = None


@dataclass(frozen=True)
class TriggerFilter:
    event_type: str | None = None
    workflow_id: uuid.UUID | None = None
    enabled: bool | None = None


def check_event_type(value: str, field: str, violations: Violations) -> str:
    if not value:
        violations.add(field, "is required")
    elif len(value) > MAX_EVENT_TYPE_LENGTH:
        violations.add(field, f"must be at most {MAX_EVENT_TYPE_LENGTH} characters")
    elif not _EVENT_TYPE.fullmatch(value):
        violations.add(
            field,
            "must be a lower-case dotted name like signup or billing.invoice_paid"
            " (letters, digits and _, each part starting with a letter)",
        )
    return value


def check_pattern(value: str, field: str, violations: Violations) -> str:
    """An event type, or a prefix pattern `billing.*` (every type under billing.)."""
    if value.endswith(PREFIX_WILDCARD):
        check_event_type(value[: -len(PREFIX_WILDCARD)], field, violations)
        return value
    return check_event_type(value, field, violations)


def check_reentry(
    mode: str, period: timedelta | None, field: str, violations: Violations
) -> Reentry:
    if mode == ONCE_PER_PERIOD:
        if period is None or period <= timedelta(0):
            violations.add(f"{field}.period", "must be a positive duration for ONCE_PER_PERIOD")
        elif period > MAX_PERIOD:
            violations.add(f"{field}.period", f"must be at most {MAX_PERIOD.days} days")
        return Reentry(mode, period)
    if period is not None:
        violations.add(f"{field}.period", "applies to ONCE_PER_PERIOD only")
    return Reentry(mode)


def parse_trigger_condition(conditions: JsonObject, field: str) -> Condition | None:
    """The condition's tree; None for {} (always holds). INVALID_ARGUMENT names
    every bad part, under `field`."""
    if not conditions:
        return None
    return parse_condition(conditions, field, TRIGGER)


@dataclass(frozen=True)
class CompiledTrigger:
    """An enabled trigger as the ingest path evaluates it."""

    id: uuid.UUID
    action: Action
    reentry: Reentry
    evaluator: Evaluator | None
    # What its condition reads of the person's tracked events.
    event_leaves: tuple[EventLeaf, ...] = ()

    def holds(self, context: Context) -> bool:
        return self.evaluator is None or self.evaluator.matches(context)


@dataclass(frozen=True)
class EntryDecision:
    """What re-entry decides of one evaluation before it is stored."""

    # The firing claims the user's entry: the statement that stores it admits
    # the claim, or refuses it (REENTRY_LIMIT) while an earlier entry holds:
    # for good (ONCE_PER_USER), or until its period is over (ONCE_PER_PERIOD).
    claim: bool = False
    # Decided already: a repeat within the batch.
    skip: str | None = None


class EntryClaims:
    """The re-entry decisions of one batch of evaluations. A limited policy is
    claimed by the first firing of a user in the batch; the later ones in the
    batch are over the limit already (a period cannot end within one batch,
    which shares one moment)."""

    def __init__(self) -> None:
        self._claimed: set[tuple[uuid.UUID, uuid.UUID]] = set()

    def decide(self, trigger: CompiledTrigger, user_id: uuid.UUID, met: bool) -> EntryDecision:
        if not met or not trigger.reentry.limited:
            return EntryDecision()
        key = (trigger.id, user_id)
        if key in self._claimed:
            return EntryDecision(skip=REENTRY_LIMIT)
        self._claimed.add(key)
        return EntryDecision(claim=True)


def compile_trigger(trigger: Trigger) -> CompiledTrigger:
    condition = parse_trigger_condition(trigger.conditions, "conditions")
    return CompiledTrigger(
        trigger.id,
        trigger.action,
        trigger.reentry,
        Evaluator(condition) if condition is not None else None,
        tuple(condition.event_leaves()) if condition is not None else (),
    )


class TriggerSet:
    """The enabled triggers at one catalog version, indexed by event type."""

    def __init__(self, version: int, triggers: Iterable[tuple[str, CompiledTrigger]]) -> None:
        self.version = version
        self._exact: dict[str, list[CompiledTrigger]] = {}
        self._prefixes: list[tuple[str, CompiledTrigger]] = []
        for pattern, trigger in triggers:
            if pattern.endswith(PREFIX_WILDCARD):
                self._prefixes.append((pattern[:-1], trigger))
            else:
                self._exact.setdefault(pattern, []).append(trigger)
        self._matching: dict[str, tuple[CompiledTrigger, ...]] = {}

    def event_leaves(self, event_types: Iterable[str]) -> list[EventLeaf]:
        """The event leaves of the triggers that events of these types concern."""
        return [
            leaf for kind in event_types for t in self.matching(kind) for leaf in t.event_leaves
        ]

    def matching(self, event_type: str) -> tuple[CompiledTrigger, ...]:
        found = self._matching.get(event_type)
        if found is None:
            found = (
                *self._exact.get(event_type, ()),
                *(t for prefix, t in self._prefixes if event_type.startswith(prefix)),
            )
            self._matching[event_type] = found
        return found


@dataclass
class Event:
    """A valid event of a call, before it is stored."""

    # Its position in the call.
    index: int
    user_id: uuid.UUID | None
    email: str | None
    event_type: str
    data: JsonObject
    # `data` as received, and as the JSON text stored.
    data_struct: struct_pb2.Struct
    data_json: str
    event_time: datetime
    message_id: str
    # The W3C traceparent of the call that brought it: its workflow starts join that trace.
    traceparent: str | None = None
    # The actors of the call that brought it: what it causes is done on their behalf.
    actors: Chain = ()
    # Its user, once the users service answered.
    user: UserView | None = field(default=None, repr=False)

    @property
    def tracked(self) -> bool:
        """Events of the lifecycle catalog (user.*, segment.*) were recorded by
        their producers; only the others are recorded, as tracked.<type>."""
        return self.event_type not in EVENT_TYPES


def attribute_changes(event_type: str, data: Mapping[str, Any]) -> AttributeChanges | None:
    """The change a user.attributes_changed event reports (data.changes =
    {key: {from, to}}, null for absent), for changed / changed_to / changed_from."""
    if event_type != "user.attributes_changed":
        return None
    changes = data.get("changes")
    if not isinstance(changes, dict):
        return None
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key, change in changes.items():
        if not isinstance(change, dict):
            continue
        if change.get("from") is not None:
            before[key] = change["from"]
        if change.get("to") is not None:
            after[key] = change["to"]
    return AttributeChanges(before, after)


class UserView(Protocol):
    """What an event holds of its user."""

    stage: str

    @property
    def profile(self) -> UserProfile: ...


def context_of(
    event: Event, as_of: datetime, person_events: tuple[PersonEvent, ...] | None = None
) -> Context:
    """What a trigger's condition reads of an event; `person_events`: the user's
    tracked events its event leaves read, this one included."""
    user = event.user.profile if event.user is not None else None
    if user is not None and person_events is not None:
        user = replace(user, events=person_events)
    return Context(
        as_of=as_of,
        user=user,
        event_type=event.event_type,
        event_data=event.data,
        changes=attribute_changes(event.event_type, event.data),
    )


@dataclass(frozen=True)
class Refusal:
    """Why an event was not stored."""

    field: str
    message: str
    reason: str
    # The error an event the store could not take failed with.
    cause: Exception | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one tracked event."""

    user_id: uuid.UUID | None = None
    duplicate: bool = False
    refusal: Refusal | None = None


@dataclass(frozen=True)
class TriggerExecution:
    """One evaluation of a trigger against an event, as ListTriggerExecutions shows it."""

    id: uuid.UUID
    trigger_id: uuid.UUID
    user_id: uuid.UUID | None
    event_data: dict[str, object] | None
    condition_met: bool
    workflow_execution_id: uuid.UUID | None
    executed_at: datetime
    skip_reason: str | None
    event_type: str | None
    message_id: str | None
    # The broadcast, once answered, for a trigger whose action is a signal.
    signal: SignalOutcome | None = None


@dataclass(frozen=True)
class SignalOutcome:
    """A signal a firing broadcast, and what the workflows service answered."""

    name: str
    delivered: int
    started: int


@dataclass(frozen=True)
class PendingStart:
    """A call a firing asked for, waiting for the workflows service: a workflow
    start, or a signal's broadcast when `signal_name` is set."""

    trigger_execution_id: uuid.UUID
    executed_at: datetime
    trigger_id: uuid.UUID
    user_id: uuid.UUID
    event_type: str
    request: bytes
    traceparent: str | None
    attempts: int
    # Whom the start is made for.
    actors: Chain
    signal_name: str | None = None


@dataclass(frozen=True)
class Settled:
    """A call the workflows service answered: an execution, a broadcast, or a refusal."""

    start: PendingStart
    workflow_execution_id: uuid.UUID | None = None
    skip_reason: str | None = None
    signal: SignalOutcome | None = None
