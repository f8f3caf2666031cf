"""Execution rows: inserted before their first step, locked and loaded for a
step, checked before a start, read for the API, erased with their user."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from runtime import tombstones
from runtime.chains import stored
from runtime.database import Executor
from services.workflows.compensation_log import CompensationLog
from services.workflows.domain import ExecutionFilter, ExecutionView, HistoryStep, IncidentRecord
from services.workflows.state import ExecutionState, Token
from services.workflows.store import compensations
from services.workflows.store.definitions import WorkflowState
from services.workflows.store.incidents import INCIDENT_COLUMNS
from services.workflows.store.locks import SHARED, USER_LOCK, lock_users_alone, lock_users_sql
from services.workflows.store.statement import Statement

# The width of current_node_id.
MAX_NODE_ID = 255


class TokenKey(NamedTuple):
    execution_id: uuid.UUID
    token: int


@dataclass(frozen=True)
class NewExecution:
    state: ExecutionState
    # Under the one-running rule: left out when its user runs the workflow already.
    exclusive: bool


@dataclass(frozen=True)
class StartCheck:
    """What decides whether an execution may start for a user."""

    # None if the workflow does not exist.
    found: WorkflowState | None
    erased: bool
    # The request_id was used already.
    claimed: bool
    # An exclusive execution of the workflow runs for the user.
    running: bool


class StartAsked(NamedTuple):
    """A start to check."""

    workflow_id: uuid.UUID
    user_id: uuid.UUID
    request_id: uuid.UUID | None


_STATE = (
    "e.id, e.workflow_id, e.workflow_version, e.user_id, e.status, e.variables, e.next_token,"
    " e.parent_execution_id, e.parent_token, e.started_at, e.current_node_id, e.actors,"
    " (SELECT coalesce(json_agg(json_build_array(t.token, t.element_id, t.scope_token,"
    "  t.arrived_via, t.variables)), '[]') FROM execution_tokens t"
    "  WHERE t.execution_id = e.id) AS tokens, " + compensations.LOAD
)


def _state(row: asyncpg.Record) -> ExecutionState:
    parent = row["parent_execution_id"]
    return ExecutionState(
        id=row["id"],
        workflow_id=row["workflow_id"],
        version=row["workflow_version"],
        user_id=row["user_id"],
        status=row["status"],
        variables=row["variables"] or {},
        next_token=row["next_token"],
        tokens={t[0]: Token(t[0], t[1], t[2], t[3], t[4]) for t in row["tokens"]},
        parent=(parent, row["parent_token"]) if parent else None,
        started_at=row["started_at"],
        last_element=row["current_node_id"],
        actors=tuple(row["actors"]),
        compensations=CompensationLog.load(row["compensations"]),
    )


async def _lock_users_of(
    conn: asyncpg.Connection, ids: list[uuid.UUID], *, skip_locked: bool
) -> list[uuid.UUID]:
    """Takes the locks of the executions' users; returns the executions to lock.
    Skipping: without waiting, and leaving out the executions of a user being erased
    or published to (their step is tried again later)."""
    if not skip_locked:
        await conn.execute(
            lock_users_sql(
                "SELECT user_id FROM workflow_executions WHERE id = ANY($1::uuid[])", SHARED
            ),
            ids,
        )
        return ids
    # In the select list, so the lock is tried for these executions' users only.
    rows = await conn.fetch(
        f"SELECT id, pg_try_advisory_xact_lock_shared({USER_LOCK}, hashtext(user_id::text))"
        " AS locked FROM workflow_executions WHERE id = ANY($1::uuid[]) ORDER BY id",
        ids,
    )
    return [row["id"] for row in rows if row["locked"]]


async def lock_executions(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID], *, skip_locked: bool = False
) -> dict[uuid.UUID, ExecutionState]:
    """Locks the executions (their users first, then the rows in id order, so
    batches never deadlock each other) and loads them."""
    wanted = await _lock_users_of(conn, sorted(set(ids)), skip_locked=skip_locked)
    skip = " SKIP LOCKED" if skip_locked else ""
    rows = await conn.fetch(
        f"SELECT {_STATE} FROM workflow_executions e WHERE e.id = ANY($1::uuid[])"
        f" ORDER BY e.id FOR UPDATE OF e{skip}",
        wanted,
    )
    return {row["id"]: _state(row) for row in rows}


def current_node(state: ExecutionState) -> str | None:
    """What current_node_id holds: the elements holding a token, as many as fit."""
    nodes = state.current_nodes
    if not nodes:
        return state.last_element
    text = ""
    for node in nodes:
        candidate = f"{text},{node}" if text else node
        if len(candidate) > MAX_NODE_ID:
            break
        text = candidate
    return text or nodes[0][:MAX_NODE_ID]


_EXECUTION_COLUMNS = (
    "id, workflow_id, workflow_version, user_id, status, variables, current_node_id,"
    " started_at, completed_at, error_message, exclusive, parent_execution_id, parent_token,"
    " next_token"
)
_EXECUTION_TYPES = (
    "uuid", "uuid", "text", "uuid", "text", "jsonb", "text", "timestamptz", "timestamptz",
    "text", "bool", "uuid", "int", "int", "jsonb",
)  # fmt: skip


def _execution_row(execution: NewExecution) -> tuple[Any, ...]:
    s = execution.state
    parent = s.parent
    return (
        s.id, s.workflow_id, s.version, s.user_id, s.status, s.variables, current_node(s),
        s.started_at, s.completed_at, s.error_message, execution.exclusive,
        parent[0] if parent else None, parent[1] if parent else None, s.next_token, s.actors,
    )  # fmt: skip


async def insert_executions(
    conn: asyncpg.Connection, executions: Sequence[NewExecution]
) -> set[uuid.UUID]:
    """Inserts executions before their first step; returns those inserted
    (an exclusive one is left out when its user runs that workflow already)."""
    q = Statement()
    rows = await conn.fetch(
        f"INSERT INTO workflow_executions ({_EXECUTION_COLUMNS}, actors)"
        f" SELECT {_EXECUTION_COLUMNS}, {stored('actors')}"
        f" FROM {q.unnest([_execution_row(e) for e in executions], _EXECUTION_TYPES)}"
        f" AS r({_EXECUTION_COLUMNS}, actors)"
        " ON CONFLICT (workflow_id, user_id) WHERE exclusive AND status IN ('pending', 'running')"
        " DO NOTHING RETURNING id",
        *q.args,
    )
    return {row["id"] for row in rows}


async def existing_execution(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, user_id: uuid.UUID
) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM workflow_executions WHERE workflow_id = $1 AND user_id = $2"
        " AND exclusive AND status IN ('pending', 'running')",
        workflow_id,
        user_id,
    )
    return found


async def running_executions(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM workflow_executions"
        " WHERE workflow_id = $1 AND status IN ('pending', 'running') ORDER BY id",
        workflow_id,
    )
    return [row["id"] for row in rows]


async def child_executions(
    conn: asyncpg.Connection, parents: Sequence[TokenKey]
) -> list[uuid.UUID]:
    """The running executions the call activities of these tokens started."""
    rows = await conn.fetch(
        "SELECT e.id FROM workflow_executions e"
        " JOIN unnest($1::uuid[], $2::int[]) AS p(id, token)"
        " ON e.parent_execution_id = p.id AND e.parent_token = p.token"
        " WHERE e.status IN ('pending', 'running')",
        [p.execution_id for p in parents],
        [p.token for p in parents],
    )
    return [row["id"] for row in rows]


async def start_checks(
    conn: Executor, starts: Sequence[StartAsked], method: str
) -> list[StartCheck]:
    """The check of each start, in order: one round trip for any number of starts."""
    rows = await conn.fetch(
        "SELECT w.status, w.version,"
        " EXISTS (SELECT 1 FROM erased_users u WHERE u.user_id = r.user_id) AS erased,"
        " EXISTS (SELECT 1 FROM idempotency_keys k"
        "  WHERE k.method = $4 AND k.request_id = r.request_id) AS claimed,"
        " EXISTS (SELECT 1 FROM workflow_executions e WHERE e.workflow_id = r.workflow_id"
        "  AND e.user_id = r.user_id AND e.exclusive AND e.status IN ('pending', 'running'))"
        "  AS running"
        " FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) WITH ORDINALITY"
        "  AS r(workflow_id, user_id, request_id, n)"
        " LEFT JOIN workflows w ON w.id = r.workflow_id ORDER BY r.n",
        [s.workflow_id for s in starts],
        [s.user_id for s in starts],
        [s.request_id for s in starts],
        method,
    )
    return [
        StartCheck(
            WorkflowState(row["status"], row["version"]) if row["status"] is not None else None,
            row["erased"],
            row["claimed"],
            row["running"],
        )
        for row in rows
    ]


async def erase_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Keeps the tombstone and deletes what is held of the user, after the
    user's starts, publishes and steps in flight committed."""
    await lock_users_alone(conn, [user_id])
    await tombstones.bury(conn, user_id)
    await conn.execute("DELETE FROM messages WHERE user_id = $1", user_id)
    result = await conn.execute("DELETE FROM workflow_executions WHERE user_id = $1", user_id)
    return int(result.split()[-1])


# ---------------------------------------------------------------- reads

_VIEW = (
    "e.id, e.workflow_id, e.workflow_version, e.user_id, e.status, e.variables,"
    " array(SELECT DISTINCT t.element_id FROM execution_tokens t WHERE t.execution_id = e.id"
    "  ORDER BY 1) AS nodes, e.started_at, e.completed_at, e.error_message"
)


def _view(
    row: asyncpg.Record, history: list[HistoryStep], incidents: list[IncidentRecord]
) -> ExecutionView:
    return ExecutionView(
        row["id"],
        row["workflow_id"],
        row["workflow_version"],
        row["user_id"],
        row["status"],
        row["variables"] or {},
        list(row["nodes"]),
        row["started_at"],
        row["completed_at"],
        row["error_message"],
        history,
        incidents,
    )


async def get_execution(
    conn: Executor, execution_id: uuid.UUID, history_limit: int
) -> ExecutionView | None:
    """The execution, its last `history_limit` steps and its incidents."""
    row = await conn.fetchrow(
        f"SELECT {_VIEW} FROM workflow_executions e WHERE e.id = $1", execution_id
    )
    if row is None:
        return None
    history = await conn.fetch(
        "SELECT element_id, element_type, state, at FROM ("
        " SELECT * FROM execution_history WHERE execution_id = $1 ORDER BY id DESC LIMIT $2"
        ") h ORDER BY id",
        execution_id,
        history_limit,
    )
    incidents = await conn.fetch(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE execution_id = $1 ORDER BY created_at, id",
        execution_id,
    )
    return _view(row, [HistoryStep(*h) for h in history], [IncidentRecord(*i) for i in incidents])


async def list_executions(
    conn: Executor,
    where: ExecutionFilter,
    *,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ExecutionView]:
    rows = await conn.fetch(
        f"SELECT {_VIEW} FROM workflow_executions e"
        " WHERE ($1::uuid IS NULL OR workflow_id = $1) AND ($2::uuid IS NULL OR user_id = $2)"
        "   AND (cardinality($3::text[]) = 0 OR status = ANY($3))"
        "   AND ($4::timestamptz IS NULL OR started_at >= $4)"
        "   AND ($5::timestamptz IS NULL OR started_at < $5)"
        "   AND ($6::timestamptz IS NULL OR (started_at, id) < ($6, $7::uuid))"
        " ORDER BY started_at DESC, id DESC LIMIT $8",
        where.workflow_id,
        where.user_id,
        list(where.statuses),
        where.started_after,
        where.started_before,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_view(row, [], []) for row in rows]
