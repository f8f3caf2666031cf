"""An execution as the interpreter sees it: its state (status, variables,
tokens), the triggers a step answers, and what a step changed (the rows the
stepper writes, the events it sends, what it asks of other executions).

Tokens are numbered per execution and never reused, so a token names one
visit of one element; timers, message subscriptions and jobs belong to a token
and go with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from runtime.chains import Chain
from services.workflows.compensation_log import CompensationLog
from services.workflows.expressions import Recurrence
from services.workflows.user_task_rules import Assignment


@dataclass
class Token:
    no: int
    element: str
    scope: int | None
    via: str | None = None
    # Local variables of its element (input mappings); None when it has none.
    variables: dict[str, Any] | None = None


@dataclass
class ExecutionState:
    id: uuid.UUID
    workflow_id: uuid.UUID
    version: str
    user_id: uuid.UUID
    status: str
    variables: dict[str, Any]
    next_token: int
    tokens: dict[int, Token]
    parent: tuple[uuid.UUID, int] | None
    started_at: datetime
    completed_at: datetime | None = None
    error_message: str | None = None
    last_element: str | None = None
    # Not stored yet: written with an INSERT.
    new: bool = False
    # Whom it works for: the actors of the call that started it.
    actors: Chain = ()
    # Completions of activities with a compensation boundary event.
    compensations: CompensationLog = field(default_factory=CompensationLog)

    @property
    def current_nodes(self) -> list[str]:
        return sorted({token.element for token in self.tokens.values()})


# ---------------------------------------------------------------- triggers


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class TimerFired:
    token: int
    element: str
    # Repetitions of a cycle left after this one; None for unbounded.
    repeat: int | None = 0


@dataclass(frozen=True)
class MessageDelivered:
    token: int
    element: str
    variables: dict[str, Any]
    # A workflow's message (lifecycle.publish_message): variables that would
    # make the receiver's too large fail the receiver, not the thrower's step.
    thrown: bool = False


@dataclass(frozen=True)
class JobCompleted:
    token: int
    variables: dict[str, Any]


@dataclass(frozen=True)
class ErrorThrown:
    token: int
    code: str
    message: str
    variables: dict[str, Any]


@dataclass(frozen=True)
class ChildCompleted:
    token: int
    variables: dict[str, Any]


@dataclass(frozen=True)
class ChildEnded:
    """A called execution ended without completing: an incident on the call activity."""

    token: int
    message: str


@dataclass(frozen=True)
class ChildErrorThrown:
    """An error a called execution did not catch, thrown again at its call activity."""

    token: int
    code: str
    message: str


@dataclass(frozen=True)
class EscalationRaised:
    """An escalation a called execution did not catch, at its call activity."""

    token: int
    code: str


@dataclass(frozen=True)
class Reactivate:
    """Runs the element of a token again (resolving an incident that was not a job's)."""

    token: int


@dataclass(frozen=True)
class Cancel:
    message: str = ""
    by_parent: bool = False


@dataclass(frozen=True)
class Fail:
    message: str


Trigger = (
    Start
    | TimerFired
    | MessageDelivered
    | JobCompleted
    | ErrorThrown
    | ChildCompleted
    | ChildEnded
    | ChildErrorThrown
    | EscalationRaised
    | Reactivate
    | Cancel
    | Fail
)

# ---------------------------------------------------------------- outcome


@dataclass(frozen=True)
class TimerRow:
    token: int
    element: str
    due_at: datetime
    # Repetitions left after this one (cycles); None for unbounded.
    repeat: int | None = 0
    interval: Recurrence | None = None


@dataclass(frozen=True)
class JobRow:
    token: int
    element: str
    type: str
    retries: int
    headers: dict[str, Any]


@dataclass(frozen=True)
class UserTaskRow:
    """A user task reached: its record is created with the token's step."""

    token: int
    element: str
    assignment: Assignment
    variables: dict[str, Any]


@dataclass(frozen=True)
class IncidentRow:
    token: int
    element: str
    message: str


@dataclass(frozen=True)
class HistoryRow:
    element: str
    type: str
    state: str
    at: datetime


class ConsumedTimer(NamedTuple):
    token: int
    element: str


class Subscription(NamedTuple):
    """A token waits for a message of this name at `element`."""

    token: int
    element: str
    message: str


class EmittedEvent(NamedTuple):
    """A lifecycle event the step sends: its type and data."""

    type: str
    data: dict[str, Any]


class ParentNotice(NamedTuple):
    """How a called execution ended, for the execution that called it."""

    status: str
    variables: dict[str, Any]
    message: str


class UncaughtError(NamedTuple):
    """A job's error no boundary event caught; the job gets the incident."""

    token: int
    message: str


@dataclass(frozen=True)
class ChildRequest:
    token: int
    workflow_id: str
    variables: dict[str, Any]
    # A call by BPMN process id (workflow_id is empty): resolved when it starts.
    process_id: str | None = None


@dataclass
class Step:
    """What one or more triggers changed in one execution."""

    removed: set[int] = field(default_factory=set)
    added: set[int] = field(default_factory=set)
    timers: list[TimerRow] = field(default_factory=list)
    consumed_timers: list[ConsumedTimer] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    user_tasks: list[UserTaskRow] = field(default_factory=list)
    # Tokens of user tasks removed (their records are cancelled unless completed).
    closed_user_tasks: list[int] = field(default_factory=list)
    incidents: list[IncidentRow] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    events: list[EmittedEvent] = field(default_factory=list)
    children: list[ChildRequest] = field(default_factory=list)
    cancelled_children: list[int] = field(default_factory=list)
    # What the parent execution must learn.
    parent_notice: ParentNotice | None = None
    uncaught_error: UncaughtError | None = None
    changed: bool = False
