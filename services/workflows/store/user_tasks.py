"""User task records: created and cancelled by a step's write (steps.py calls
`add_writes`), read, claimed, assigned and completed by the use case."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from runtime.database import Executor
from services.workflows.state import ExecutionState, UserTaskRow
from services.workflows.store.statement import Statement
from services.workflows.user_task_rules import (
    ASSIGNED,
    CANCELLED,
    COMPLETED,
    CREATED,
    UserTaskQuery,
    UserTaskRecord,
)


class NewUserTask(NamedTuple):
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


class ClosedUserTask(NamedTuple):
    """The token of a user task went: its record is cancelled, unless completed."""

    execution_id: uuid.UUID
    token: int
    at: datetime


def new_user_task(state: ExecutionState, task: UserTaskRow, now: datetime) -> NewUserTask:
    """The record of a user task a step of `state` reached."""
    given = task.assignment
    return NewUserTask(
        uuid.uuid4(),
        state.id,
        task.token,
        task.element,
        state.workflow_id,
        state.version,
        state.user_id,
        ASSIGNED if given.assignee else CREATED,
        given.assignee,
        given.candidate_groups,
        given.candidate_users,
        given.due_at,
        given.follow_up_at,
        task.variables,
        now,
    )


_TYPES = (
    "uuid", "uuid", "int", "text", "uuid", "text", "uuid", "text", "text", "text", "text",
    "timestamptz", "timestamptz", "jsonb", "timestamptz",
)  # fmt: skip


def add_writes(q: Statement, new: Sequence[NewUserTask], closed: Sequence[ClosedUserTask]) -> None:
    """The CTEs of a step's write: the records of the user tasks reached, and the
    open records of the user tasks whose tokens went, cancelled."""
    if new:
        columns = ", ".join(NewUserTask._fields)
        # The lists as JSON text: an array parameter cannot hold arrays of other lengths.
        rows = [
            (*r[:9], json.dumps(r.candidate_groups), json.dumps(r.candidate_users), *r[11:])
            for r in new
        ]
        q.add(
            "user_tasks",
            f"INSERT INTO user_tasks ({columns})"
            " SELECT r.id, r.execution_id, r.token, r.element_id, r.workflow_id,"
            " r.workflow_version, r.user_id, r.state, r.assignee,"
            " ARRAY(SELECT jsonb_array_elements_text(r.candidate_groups::jsonb)),"
            " ARRAY(SELECT jsonb_array_elements_text(r.candidate_users::jsonb)),"
            " r.due_at, r.follow_up_at, r.variables, r.created_at"
            f" FROM {q.unnest(rows, _TYPES)} AS r({columns})",
        )
    if closed:
        q.add(
            "closed_user_tasks",
            f"UPDATE user_tasks u SET state = '{CANCELLED}', completed_at = c.at"
            f" FROM {q.unnest(closed, ('uuid', 'int', 'timestamptz'))} AS c(id, token, at)"
            " WHERE u.execution_id = c.id AND u.token = c.token"
            f" AND u.state IN ('{CREATED}', '{ASSIGNED}')",
        )


USER_TASK_FIELDS = (
    "id, execution_id, token, element_id, workflow_id, workflow_version, user_id, state,"
    " assignee, candidate_groups, candidate_users, due_at, follow_up_at, variables,"
    " created_at, completed_at"
)


def user_task_record(row: asyncpg.Record) -> UserTaskRecord:
    values = dict(row)
    values["candidate_groups"] = list(values["candidate_groups"])
    values["candidate_users"] = list(values["candidate_users"])
    values["variables"] = values["variables"] or {}
    return UserTaskRecord(**values)


async def get_user_task(
    conn: Executor, task_id: uuid.UUID, *, lock: bool = False
) -> UserTaskRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {USER_TASK_FIELDS} FROM user_tasks WHERE id = $1{suffix}", task_id
    )
    return user_task_record(row) if row else None


async def list_user_tasks(
    conn: Executor,
    query: UserTaskQuery,
    *,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[UserTaskRecord]:
    rows = await conn.fetch(
        f"SELECT {USER_TASK_FIELDS} FROM user_tasks"
        " WHERE ($1::text = '' OR assignee = $1)"
        "   AND ($2::text = '' OR candidate_groups @> ARRAY[$2::text])"
        "   AND ($3::text = '' OR candidate_users @> ARRAY[$3::text])"
        "   AND (cardinality($4::text[]) = 0 OR state = ANY($4))"
        "   AND ($5::uuid IS NULL OR user_id = $5)"
        "   AND ($6::uuid IS NULL OR execution_id = $6)"
        "   AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))"
        " ORDER BY created_at DESC, id DESC LIMIT $9",
        query.assignee,
        query.candidate_group,
        query.candidate_user,
        list(query.states),
        query.user_id,
        query.execution_id,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [user_task_record(row) for row in rows]


async def set_assignee(
    conn: Executor, task_id: uuid.UUID, assignee: str | None
) -> UserTaskRecord | None:
    """Gives an open task to `assignee` (None: to nobody); None if it is not open."""
    row = await conn.fetchrow(
        f"UPDATE user_tasks SET assignee = $2,"
        f" state = CASE WHEN $2::text IS NULL THEN '{CREATED}' ELSE '{ASSIGNED}' END"
        f" WHERE id = $1 AND state IN ('{CREATED}', '{ASSIGNED}') RETURNING {USER_TASK_FIELDS}",
        task_id,
        assignee,
    )
    return user_task_record(row) if row else None


async def complete_user_task(conn: Executor, task_id: uuid.UUID, at: datetime) -> UserTaskRecord:
    row = await conn.fetchrow(
        f"UPDATE user_tasks SET state = '{COMPLETED}', completed_at = $2"
        f" WHERE id = $1 RETURNING {USER_TASK_FIELDS}",
        task_id,
        at,
    )
    assert row is not None  # locked by the caller
    return user_task_record(row)
