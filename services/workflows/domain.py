"""The workflows service's rules and the types its use cases answer with. No I/O.

Workflow definitions move between statuses (`STATUS_MOVES`) and get a new
minor version when their BPMN changes; executions have statuses of their own;
jobs are named by keys and retried with an exponential backoff until their
retries run out, then they become incidents.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from runtime.chains import Chain
from runtime.errors import NotFound
from runtime.idempotency import RequestKey
from runtime.lifecycle_events import EMITTED_PREFIX
from runtime.structs import compact_json
from services.workflows.expressions import MAX_VALUE_DEPTH, RESERVED_NAMES, too_deep

PRODUCER = "workflows"

# ---------------------------------------------------------------- workflow definitions

DRAFT, ACTIVE, INACTIVE, ARCHIVED = "draft", "active", "inactive", "archived"
# Target status -> the statuses it may be reached from.
STATUS_MOVES = {ACTIVE: {DRAFT, INACTIVE}, INACTIVE: {ACTIVE}, ARCHIVED: {DRAFT, INACTIVE}}


def can_move(current: str, target: str) -> bool:
    """Whether a workflow may go from `current` to `target` (staying is no move)."""
    return current == target or current in STATUS_MOVES[target]


def next_version(version: str) -> str:
    """A changed BPMN is a new minor version: 1.0.0 -> 1.1.0."""
    major, minor, _ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


def workflow_not_found(workflow_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"workflow {workflow_id} does not exist",
        reason="WORKFLOW_NOT_FOUND",
        metadata={"workflow_id": str(workflow_id)},
    )


@dataclass(frozen=True)
class WorkflowRecord:
    id: uuid.UUID
    name: str
    description: str
    bpmn_xml: str
    version: str
    stages: list[str]
    status: str
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WorkflowFields:
    name: str
    description: str
    bpmn_xml: str
    stages: list[str]
    created_by: uuid.UUID | None = None


@dataclass(frozen=True)
class VersionRow:
    """A validated version of a workflow, as it is stored."""

    bpmn_xml: str
    definition: dict[str, Any]
    checksum: bytes
    start_message: str | None


# ---------------------------------------------------------------- executions

PENDING, RUNNING = "pending", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ACTIVE_STATUSES = (PENDING, RUNNING)
ENDED_STATUSES = (COMPLETED, FAILED, CANCELLED)
MAX_VARIABLES_BYTES = 65536


@dataclass(frozen=True)
class ExecutionFilter:
    """Which executions a list holds (ListExecutions' filters); None or empty: any."""

    workflow_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    statuses: tuple[str, ...] = ()
    # Started at or after `started_after`, and before `started_before`.
    started_after: datetime | None = None
    started_before: datetime | None = None


def variables_problems(variables: dict[str, Any]) -> list[str]:
    """What makes variables a request brings unusable: reserved names, more
    than MAX_VARIABLES_BYTES as JSON, values nested too deep."""
    problems = []
    reserved = sorted(RESERVED_NAMES & variables.keys())
    if reserved:
        problems.append(f"{', '.join(reserved)} are reserved names (see docs/workflows.md)")
    if len(compact_json(variables).encode()) > MAX_VARIABLES_BYTES:
        problems.append(f"must be at most {MAX_VARIABLES_BYTES} bytes as JSON")
    if any(too_deep(value) for value in variables.values()):
        problems.append(f"a value nests lists and maps more than {MAX_VALUE_DEPTH} deep")
    return problems


# The history steps GetExecution shows at most (the latest).
HISTORY_LIMIT = 1000

# A user profile for expressions: {"id", "stage", "attributes"}; None once erased.
Profile = dict[str, Any] | None


class HistoryStep(NamedTuple):
    element_id: str
    element_type: str
    state: str
    at: datetime


@dataclass(frozen=True)
class IncidentRecord:
    id: uuid.UUID
    execution_id: uuid.UUID
    token: int
    element_id: str
    from_job: bool
    error_message: str
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class ExecutionView:
    id: uuid.UUID
    workflow_id: uuid.UUID
    version: str
    user_id: uuid.UUID
    status: str
    variables: dict[str, Any]
    current_nodes: list[str]
    started_at: datetime
    completed_at: datetime | None
    error_message: str | None
    history: list[HistoryStep]
    incidents: list[IncidentRecord]


def execution_not_found(execution_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"execution {execution_id} does not exist",
        reason="EXECUTION_NOT_FOUND",
        metadata={"execution_id": str(execution_id)},
    )


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
    # A campaign cycle's start: the version the cycle began on, which starts
    # whatever the workflow's status is since (a cycle that began finishes).
    version: str | None = None


@dataclass(frozen=True)
class Started:
    execution: ExecutionView
    existing: bool


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class NewMessage:
    name: str
    user_id: uuid.UUID
    message_id: str | None
    variables: dict[str, Any]
    ttl: timedelta
    # The key subscriptions wait on (zeebe:subscription correlationKey), within
    # the user; None: the user id.
    correlation_key: str | None = None


def publish_waves(users: Sequence[uuid.UUID]) -> list[list[int]]:
    """The positions of messages (of these users, in order) in waves of at most
    one message per user: a user's first message is settled before their next
    one is matched, as if each were published alone, in order."""
    waves: list[list[int]] = []
    seen: Counter[uuid.UUID] = Counter()
    for position, user in enumerate(users):
        rank = seen[user]
        seen[user] += 1
        if rank == len(waves):
            waves.append([])
        waves[rank].append(position)
    return waves


@dataclass(frozen=True)
class Published:
    delivered: int
    buffered: bool
    duplicate: bool
    # Set when the message could not be published: the database refused a value
    # of it, or it failed on an internal error (runtime.isolation).
    error: Exception | None = None


# ---------------------------------------------------------------- jobs

# Built-in service task types, done by the engine itself.
SET_STAGE = "lifecycle.set_stage"
UPDATE_ATTRIBUTES = "lifecycle.update_attributes"
EMIT_EVENT = "lifecycle.emit_event"
PUBLISH_MESSAGE = "lifecycle.publish_message"
BUILTIN_PREFIX = "lifecycle."
BUILTIN_TYPES = frozenset({SET_STAGE, UPDATE_ATTRIBUTES, EMIT_EVENT, PUBLISH_MESSAGE})
# The built-in types done within the step that reaches their element, in its
# transaction (no job): an event emitted, a message published, exactly once.
INLINE_BUILTINS = frozenset({EMIT_EVENT, PUBLISH_MESSAGE})
# The parameters of each built-in type that are CEL giving a map (a header is an expression).
MAP_PARAMETERS = {
    UPDATE_ATTRIBUTES: ("attributes",),
    EMIT_EVENT: ("data",),
    PUBLISH_MESSAGE: ("variables",),
}


def event_name_problem(name: object) -> str | None:
    """What makes `name` unusable as an emitted event's name, if anything."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 80
        or not all(c.isalnum() or c in "_.-" for c in name)
    ):
        return "must be a name of letters, digits, _.-"
    return None


# Events emitted by workflows (EMIT_EVENT) are recorded as "workflow.<name>".
EMITTED_EVENT_PREFIX = EMITTED_PREFIX
# The built-in types a worker of the service does by calling the users service.
USERS_JOB_TYPES = (SET_STAGE, UPDATE_ATTRIBUTES)

RETRY_BACKOFF_BASE = 1.0
RETRY_BACKOFF_MAX = 600.0


def backoff(failures: int) -> timedelta:
    """Exponential: 1 s, 2 s, 4 s, ... capped at 10 minutes."""
    return timedelta(seconds=min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2 ** max(0, failures - 1)))


def retry_at(
    failures: int, retries: int, retry_backoff: timedelta | None, now: datetime
) -> datetime | None:
    """When a job that failed (`failures` times before) comes back with `retries`
    left: after the backoff it asked for, else the exponential one; None when no
    retry is left, and the job becomes an incident."""
    if retries <= 0:
        return None
    return now + (retry_backoff if retry_backoff else backoff(failures + 1))


def retries_after_failure(retries: int, retryable: bool) -> int:
    """The retries a built-in job keeps after a failed call: none when retrying cannot help."""
    return retries - 1 if retryable else 0


def job_key(execution_id: uuid.UUID, token: int) -> str:
    return f"{execution_id}.{token}"


class JobKey(NamedTuple):
    execution_id: uuid.UUID
    token: int


def parse_job_key(key: str) -> JobKey | None:
    execution, _, token = key.partition(".")
    try:
        return JobKey(uuid.UUID(execution), int(token))
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRecord:
    execution_id: uuid.UUID
    token: int
    job_type: str
    element_id: str
    workflow_id: uuid.UUID
    user_id: uuid.UUID
    headers: dict[str, Any]
    retries: int
    failures: int
    state: str
    available_at: datetime
    # The trace of the step that created the job.
    traceparent: str | None
    variables: dict[str, Any]
    # Whom its execution works for.
    actors: Chain


@dataclass(frozen=True)
class JobOutcome:
    """What became of a built-in job's call: `error` is None when it is done."""

    error: str | None
    # Whether a retry may help.
    retryable: bool = False


DONE = JobOutcome(None)
