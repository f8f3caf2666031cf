"""User tasks (Zeebe 8's `bpmn:userTask`), the rules without I/O: what the
modeler's extensions say (read when a workflow is saved), what the task's
assignment and schedule come to when a token reaches it (evaluated by the
interpreter), and the task record and its states.

A user task is a wait state, as a job is: reaching it creates a task record
(store/user_tasks.py) and its token waits until CompleteUserTask. Both kinds
Zeebe has are read the same way: a Zeebe user task (`<zeebe:userTask/>`) and
a job-based one (without it); neither is a job here.

- `zeebe:assignmentDefinition assignee="..." candidateGroups="..."
  candidateUsers="..."`: a static value (candidates: a comma-separated list)
  or an `=expression` (giving a string; candidates: a list of strings or a
  comma-separated string).
- `zeebe:taskSchedule dueDate="..." followUpDate="..."`: an ISO-8601
  date-time with a zone, or an `=expression` giving one (a string or a
  timestamp).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from xml.etree.ElementTree import Element as XmlElement

from runtime.errors import NotFound
from services.workflows.expressions import ExpressionError, parse_date

ZEEBE = "http://camunda.org/schema/zeebe/1.0"
BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"

# The record's states: open (created: nobody has it; assigned: someone has it),
# then ended (completed through the API; cancelled with its token).
CREATED = "created"
ASSIGNED = "assigned"
COMPLETED = "completed"
CANCELLED = "cancelled"
OPEN_STATES = (CREATED, ASSIGNED)
STATES = (CREATED, ASSIGNED, COMPLETED, CANCELLED)

# An assignee or a candidate: a name, as the API takes names.
MAX_NAME_LENGTH = 255
# Candidate groups or users of one task.
MAX_CANDIDATES = 100

# The attributes (extension, attribute) a user task takes, by field.
ATTRIBUTES = {
    "assignee": ("assignmentDefinition", "assignee"),
    "candidate_groups": ("assignmentDefinition", "candidateGroups"),
    "candidate_users": ("assignmentDefinition", "candidateUsers"),
    "due_date": ("taskSchedule", "dueDate"),
    "follow_up_date": ("taskSchedule", "followUpDate"),
}
LISTS = ("candidate_groups", "candidate_users")
DATES = ("due_date", "follow_up_date")


@dataclass(frozen=True)
class UserTaskSpec:
    """What the modeler set on a user task: each a static value or `=expression`."""

    assignee: str | None = None
    candidate_groups: str | None = None
    candidate_users: str | None = None
    due_date: str | None = None
    follow_up_date: str | None = None
    # A Zeebe user task (`zeebe:userTask`) rather than a job-based one.
    zeebe: bool = True


class Assignment(NamedTuple):
    """What a user task's attributes came to when its token reached it."""

    assignee: str | None
    candidate_groups: list[str]
    candidate_users: list[str]
    due_at: datetime | None
    follow_up_at: datetime | None


@dataclass(frozen=True)
class UserTaskRecord:
    id: uuid.UUID
    execution_id: uuid.UUID
    token: int
    element_id: str
    workflow_id: uuid.UUID
    workflow_version: str
    user_id: uuid.UUID
    state: str
    assignee: str | None
    candidate_groups: list[str]
    candidate_users: list[str]
    due_at: datetime | None
    follow_up_at: datetime | None
    variables: dict[str, Any]
    created_at: datetime
    completed_at: datetime | None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class UserTaskQuery:
    """ListUserTasks' filters; empty ones do not filter."""

    assignee: str = ""
    candidate_group: str = ""
    candidate_user: str = ""
    states: tuple[str, ...] = ()
    user_id: uuid.UUID | None = None
    execution_id: uuid.UUID | None = None

    def bound(self) -> list[Any]:
        """What a page token is bound to."""
        return [
            self.assignee,
            self.candidate_group,
            self.candidate_user,
            list(self.states),
            str(self.user_id or ""),
            str(self.execution_id or ""),
        ]


def user_task_not_found(task_id: uuid.UUID) -> NotFound:
    return NotFound(f"user task {task_id} does not exist", reason="USER_TASK_NOT_FOUND")


# ---------------------------------------------------------------- when saved


def _extensions(element: XmlElement, tag: str) -> Iterator[XmlElement]:
    for child in element:
        if child.tag == f"{{{BPMN}}}extensionElements":
            yield from child.iter(f"{{{ZEEBE}}}{tag}")


def read_spec(
    element: XmlElement,
    element_id: str,
    problem: Callable[[str, str], None],
    expressions: list[tuple[str, str]],
) -> UserTaskSpec:
    """A user task's attributes; static values are checked now, expressions
    are added to `expressions` to be compiled with the others."""
    values: dict[str, Any] = {"zeebe": any(True for _ in _extensions(element, "userTask"))}
    for field, (tag, attribute) in ATTRIBUTES.items():
        for extension in _extensions(element, tag):
            value = (extension.get(attribute) or "").strip()
            if not value:
                continue
            values[field] = value
            if value.startswith("="):
                expressions.append((element_id, value))
                continue
            try:
                static(field, value)
            except ExpressionError as error:
                problem(element_id, str(error))
    return UserTaskSpec(**values)


def static(field: str, value: str) -> Any:
    """A static attribute's value, checked (ExpressionError naming it)."""
    if field in DATES:
        return date_value(field, value)
    if field in LISTS:
        return names_value(field, value)
    return name_value(field, value)


# ---------------------------------------------------------------- when reached


def assignment(spec: UserTaskSpec, value_of: Callable[[str, str], Any]) -> Assignment:
    """What `spec` comes to now; `value_of(field, expression)` evaluates an
    expression. ExpressionError names the attribute at fault."""
    values: dict[str, Any] = {}
    for field in ATTRIBUTES:
        raw = getattr(spec, field)
        if raw is None:
            values[field] = [] if field in LISTS else None
            continue
        value: Any = value_of(field, raw) if raw.startswith("=") else raw
        if field in DATES:
            values[field] = None if value is None else date_value(field, value)
        elif field in LISTS:
            values[field] = names_value(field, value)
        else:
            values[field] = name_value(field, value)
    return Assignment(
        values["assignee"],
        values["candidate_groups"],
        values["candidate_users"],
        values["due_date"],
        values["follow_up_date"],
    )


def _label(field: str) -> str:
    tag, attribute = ATTRIBUTES[field]
    return f"{attribute} (zeebe:{tag})"


def name_value(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExpressionError(f"{_label(field)} must be a string, not {type(value).__name__}")
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ExpressionError(f"{_label(field)} must be at most {MAX_NAME_LENGTH} characters")
    return name or None


def names_value(field: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ExpressionError(
            f"{_label(field)} must be a list of strings or a comma-separated string,"
            f" not {type(value).__name__}"
        )
    names: list[str] = []
    for item in items:
        name = name_value(field, item)
        if name and name not in names:
            names.append(name)
    if len(names) > MAX_CANDIDATES:
        raise ExpressionError(f"{_label(field)} names more than {MAX_CANDIDATES}")
    return names


def date_value(field: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ExpressionError(
            f"{_label(field)} must be an ISO-8601 date-time, not {type(value).__name__}"
        )
    try:
        return parse_date(value)
    except ExpressionError as error:
        raise ExpressionError(f"{_label(field)}: {error}") from error
