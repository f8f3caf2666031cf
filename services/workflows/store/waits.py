"""What an execution waits on now (ListExecutionWaits): its timers, message and
signal subscriptions, jobs and open user tasks, a page at a time, by token,
then kind, then element. One statement per kind, each after the page's cursor."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple

import asyncpg

from services.workflows.store.definitions import WorkflowVersion
from services.workflows.store.messages import KEY
from services.workflows.store.user_tasks import USER_TASK_FIELDS, user_task_record
from services.workflows.user_task_rules import ASSIGNED, CREATED, UserTaskRecord

# The kinds, in their order within a token.
TIMER, MESSAGE, SIGNAL, JOB, USER_TASK = range(5)
# The kinds that wait for an event.
EVENT_KINDS = frozenset({TIMER, MESSAGE, SIGNAL})


class WaitCursor(NamedTuple):
    """Where a page ends: a token, a kind, an element."""

    token: int
    kind: int
    element_id: str


class TimerRow(NamedTuple):
    due_at: datetime


class MessageRow(NamedTuple):
    message_name: str
    # Its correlation key, else the user id.
    correlation_key: str
    # None: made before subscriptions recorded it.
    created_at: datetime | None


class SignalRow(NamedTuple):
    signal_name: str
    created_at: datetime | None


class JobRow(NamedTuple):
    job_type: str
    state: str
    retries: int
    failures: int
    worker: str | None
    # The retry time of a ready job, the lock's end of an activated one.
    available_at: datetime
    error_message: str | None


Detail = TimerRow | MessageRow | SignalRow | JobRow | UserTaskRecord


class WaitRow(NamedTuple):
    token: int
    kind: int
    element_id: str
    detail: Detail

    @property
    def cursor(self) -> WaitCursor:
        return WaitCursor(self.token, self.kind, self.element_id)


# Per kind: its table, its select list (token and element first), which rows wait.
_KINDS = {
    TIMER: ("timers", "token, element_id, due_at", ""),
    MESSAGE: (
        "message_subscriptions",
        f"token, element_id, message_name, {KEY.format('message_subscriptions')}, created_at",
        "",
    ),
    SIGNAL: ("signal_subscriptions", "token, element_id, signal_name, created_at", ""),
    JOB: (
        "jobs",
        "token, element_id, job_type, state, retries, failures, worker, available_at,"
        " error_message",
        "",
    ),
    USER_TASK: ("user_tasks", USER_TASK_FIELDS, f" AND state IN ('{CREATED}', '{ASSIGNED}')"),
}
_DETAILS: dict[int, type[TimerRow | MessageRow | SignalRow | JobRow]] = {
    TIMER: TimerRow,
    MESSAGE: MessageRow,
    SIGNAL: SignalRow,
    JOB: JobRow,
}


def _detail(kind: int, row: asyncpg.Record) -> Detail:
    if kind == USER_TASK:
        return user_task_record(row)
    return _DETAILS[kind](*tuple(row)[2:])


async def execution_version(
    conn: asyncpg.Connection, execution_id: uuid.UUID
) -> WorkflowVersion | None:
    """The workflow version the execution runs; None if there is no such execution."""
    row = await conn.fetchrow(
        "SELECT workflow_id, workflow_version FROM workflow_executions WHERE id = $1",
        execution_id,
    )
    return WorkflowVersion(row[0], row[1]) if row else None


async def waits(
    conn: asyncpg.Connection, execution_id: uuid.UUID, after: WaitCursor | None, limit: int
) -> list[WaitRow]:
    """Up to `limit` waits of the execution after the cursor, in order. Elements
    sort by code point (COLLATE "C"), as the merge of the kinds here does."""
    found: list[WaitRow] = []
    for kind, (table, columns, open_only) in _KINDS.items():
        rows = await conn.fetch(
            f"SELECT {columns} FROM {table}"
            f" WHERE execution_id = $1{open_only} AND ($2::int IS NULL"
            f'  OR (token, {kind}, element_id COLLATE "C") > ($2, $3::int, $4::text))'
            ' ORDER BY token, element_id COLLATE "C" LIMIT $5',
            execution_id,
            after.token if after else None,
            after.kind if after else None,
            after.element_id if after else None,
            limit,
        )
        found += [WaitRow(r["token"], kind, r["element_id"], _detail(kind, r)) for r in rows]
    found.sort(key=lambda w: w.cursor)
    return found[:limit]
