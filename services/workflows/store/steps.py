"""The write of a step: the rows of many executions' steps, one statement for
all of them, one data-modifying CTE per table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from runtime.database import Executor
from runtime.telemetry import current_traceparent
from services.workflows.state import ExecutionState
from services.workflows.store import compensations, signals, user_tasks
from services.workflows.store.executions import TokenKey, current_node
from services.workflows.store.signals import NewSignalSubscription
from services.workflows.store.statement import Statement
from services.workflows.store.user_tasks import ClosedUserTask, NewUserTask

# Each row type's fields are its table's columns, in order.


class TimerKey(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str


class NewToken(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str
    scope_token: int | None
    arrived_via: str | None
    # Its element's local variables (input mappings).
    variables: dict[str, Any] | None = None


class NewTimer(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str
    due_at: datetime
    # Repetitions of a cycle left after the next one; None for unbounded.
    repeat: int | None


class NewSubscription(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str
    message_name: str
    user_id: uuid.UUID
    # zeebe:subscription correlationKey's value; None: the user id.
    correlation_key: str | None
    # The step's time: since when the token waits.
    created_at: datetime


class NewJob(NamedTuple):
    execution_id: uuid.UUID
    token: int
    job_type: str
    element_id: str
    workflow_id: uuid.UUID
    user_id: uuid.UUID
    headers: dict[str, Any]
    retries: int
    available_at: datetime


class NewIncident(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str
    from_job: bool
    error_message: str
    created_at: datetime


class NewHistory(NamedTuple):
    execution_id: uuid.UUID
    element_id: str
    element_type: str
    state: str
    at: datetime


class Delivery(NamedTuple):
    """A buffered message handed to an execution (it gets each message once)."""

    message_id: int
    execution_id: uuid.UUID


@dataclass
class Writes:
    """Rows of many executions' steps, written in one statement."""

    updated: list[ExecutionState] = field(default_factory=list)
    removed_tokens: list[TokenKey] = field(default_factory=list)
    consumed_timers: list[TimerKey] = field(default_factory=list)
    tokens: list[NewToken] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    subscriptions: list[NewSubscription] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    incidents: list[NewIncident] = field(default_factory=list)
    history: list[NewHistory] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    user_tasks: list[NewUserTask] = field(default_factory=list)
    closed_user_tasks: list[ClosedUserTask] = field(default_factory=list)
    signal_subscriptions: list[NewSignalSubscription] = field(default_factory=list)


_UPDATE_TYPES = ("uuid", "text", "jsonb", "text", "timestamptz", "text", "int")
# (CTE, table, rows, their types, ON CONFLICT clause) of the inserts.
_Insert = tuple[str, str, Sequence[NamedTuple], tuple[str, ...], str]


def _inserts(w: Writes) -> tuple[_Insert, ...]:
    return (
        ("tokens", "execution_tokens", w.tokens, ("uuid", "int", "text", "int", "text", "jsonb"),
         ""),
        ("timers", "timers", w.timers, ("uuid", "int", "text", "timestamptz", "int"),
         " ON CONFLICT (execution_id, token, element_id)"
         " DO UPDATE SET due_at = excluded.due_at, repeat = excluded.repeat"),
        ("subscriptions", "message_subscriptions", w.subscriptions,
         ("uuid", "int", "text", "text", "uuid", "text", "timestamptz"),
         " ON CONFLICT DO NOTHING"),
        ("jobs", "jobs", w.jobs,
         ("uuid", "int", "text", "text", "uuid", "uuid", "jsonb", "int", "timestamptz"), ""),
        ("incidents", "incidents", w.incidents,
         ("uuid", "int", "text", "bool", "text", "timestamptz"), ""),
        ("history", "execution_history", w.history,
         ("uuid", "text", "text", "text", "timestamptz"), ""),
    )  # fmt: skip


async def write(conn: Executor, w: Writes) -> None:
    """Writes the steps in one statement (jobs carry the current trace). A timer
    consumed and armed again in the same step is updated, not deleted: one
    statement must not touch a row twice."""
    q = Statement()
    if w.updated:
        updates = [
            (s.id, s.status, s.variables, current_node(s), s.completed_at, s.error_message,
             s.next_token)
            for s in w.updated
        ]  # fmt: skip
        q.add(
            "updated",
            "UPDATE workflow_executions e SET status = u.status, variables = u.variables,"
            " current_node_id = u.node, completed_at = u.completed_at,"
            " error_message = u.error_message, next_token = u.next_token"
            f" FROM {q.unnest(updates, _UPDATE_TYPES)} AS u(id, status, variables, node,"
            " completed_at, error_message, next_token) WHERE e.id = u.id",
        )
    if w.removed_tokens:
        q.add(
            "removed_tokens",
            f"DELETE FROM execution_tokens t USING {q.unnest(w.removed_tokens, ('uuid', 'int'))}"
            " AS r(id, token) WHERE t.execution_id = r.id AND t.token = r.token",
        )
    rearmed = {TimerKey(t.execution_id, t.token, t.element_id) for t in w.timers}
    consumed = [t for t in w.consumed_timers if t not in rearmed]
    if consumed:
        q.add(
            "consumed_timers",
            f"DELETE FROM timers t USING {q.unnest(consumed, ('uuid', 'int', 'text'))}"
            " AS r(id, token, element) WHERE t.execution_id = r.id AND t.token = r.token"
            " AND t.element_id = r.element",
        )
    for name, table, rows, types, conflict in _inserts(w):
        if rows:
            columns = ", ".join(rows[0]._fields)
            extra, value = "", ""
            if table == "jobs":
                extra, value = ", traceparent", f", {q.arg(current_traceparent(), 'text')}"
            q.add(
                name,
                f"INSERT INTO {table} ({columns}{extra}) SELECT r.*{value}"
                f" FROM {q.unnest(rows, types)} AS r({columns}){conflict}",
            )
    user_tasks.add_writes(q, w.user_tasks, w.closed_user_tasks)
    signals.add_writes(q, w.signal_subscriptions)
    compensations.add_writes(q, w.updated)
    if w.deliveries:
        q.add(
            "deliveries",
            "UPDATE messages m SET delivered_to = m.delivered_to || d.ids"
            " FROM (SELECT id, array_agg(execution_id) AS ids"
            f"  FROM {q.unnest(w.deliveries, ('bigint', 'uuid'))} AS x(id, execution_id)"
            " GROUP BY id) d WHERE m.id = d.id",
        )
    if q.ctes:
        await conn.execute(f"WITH {', '.join(q.ctes)} SELECT 1", *q.args)
