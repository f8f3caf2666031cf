"""The workflows service's SQL. Every function runs on the connection it is
given, inside the caller's transaction where one is open; writes of many
executions are one statement each (unnest arrays)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from runtime import tombstones
from runtime.chains import Chain, stored
from runtime.database import Executor
from runtime.telemetry import current_traceparent
from services.workflows.bpmn import SET_STAGE, UPDATE_ATTRIBUTES
from services.workflows.engine import ExecutionState, Token

MAX_NODE_ID = 255


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


_WORKFLOW = (
    "w.id, w.name, coalesce(w.description, '') AS description, w.bpmn_xml, w.version,"
    " coalesce(w.lifecycle_stages, '{}') AS lifecycle_stages, w.status, w.created_by,"
    " w.created_at, w.updated_at"
)


def _workflow(row: asyncpg.Record) -> WorkflowRecord:
    return WorkflowRecord(
        row["id"],
        row["name"],
        row["description"],
        row["bpmn_xml"],
        row["version"],
        list(row["lifecycle_stages"]),
        row["status"],
        row["created_by"],
        row["created_at"],
        row["updated_at"],
    )


@dataclass(frozen=True)
class VersionRow:
    bpmn_xml: str
    definition: dict[str, Any]
    checksum: bytes
    start_message: str | None


async def insert_workflow(
    conn: asyncpg.Connection,
    name: str,
    description: str,
    stages: list[str],
    *,
    created_by: uuid.UUID | None,
    version: VersionRow,
) -> WorkflowRecord:
    row = await conn.fetchrow(
        "INSERT INTO workflows AS w (name, description, bpmn_xml, lifecycle_stages, created_by)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_WORKFLOW}",
        name,
        description,
        version.bpmn_xml,
        stages,
        created_by,
    )
    assert row is not None
    workflow = _workflow(row)
    await save_version(conn, workflow.id, workflow.version, version)
    return workflow


async def save_version(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, version: str, row: VersionRow
) -> None:
    await conn.execute(
        "INSERT INTO workflow_versions"
        " (workflow_id, version, bpmn_xml, definition, checksum, start_message)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workflow_id, version) DO UPDATE"
        " SET bpmn_xml = $3, definition = $4, checksum = $5, start_message = $6",
        workflow_id,
        version,
        row.bpmn_xml,
        row.definition,
        row.checksum,
        row.start_message,
    )


async def get_workflow(
    conn: Executor, workflow_id: uuid.UUID, *, lock: bool = False
) -> WorkflowRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_WORKFLOW} FROM workflows w WHERE id = $1{suffix}", workflow_id
    )
    return _workflow(row) if row else None


async def get_workflow_version(
    conn: Executor, workflow_id: uuid.UUID, version: str
) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_WORKFLOW.replace('w.bpmn_xml', 'v.bpmn_xml').replace('w.version', 'v.version')}"
        " FROM workflows w JOIN workflow_versions v ON v.workflow_id = w.id"
        " WHERE w.id = $1 AND v.version = $2",
        workflow_id,
        version,
    )
    return _workflow(row) if row else None


async def version_checksum(conn: Executor, workflow_id: uuid.UUID, version: str) -> bytes | None:
    checksum: bytes | None = await conn.fetchval(
        "SELECT checksum FROM workflow_versions WHERE workflow_id = $1 AND version = $2",
        workflow_id,
        version,
    )
    return checksum


async def list_workflows(
    conn: Executor,
    statuses: list[str],
    stages: list[str],
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {_WORKFLOW} FROM workflows w"
        " WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))"
        "   AND (cardinality($2::text[]) = 0 OR lifecycle_stages && $2::varchar[])"
        "   AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))"
        " ORDER BY created_at, id LIMIT $5",
        statuses,
        stages,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_workflow(row) for row in rows]


async def update_workflow(
    conn: asyncpg.Connection,
    workflow_id: uuid.UUID,
    *,
    name: str,
    description: str,
    stages: list[str],
    bpmn_xml: str,
    version: str,
) -> WorkflowRecord:
    row = await conn.fetchrow(
        "UPDATE workflows w SET name = $2, description = $3, lifecycle_stages = $4,"
        f" bpmn_xml = $5, version = $6 WHERE id = $1 RETURNING {_WORKFLOW}",
        workflow_id,
        name,
        description,
        stages,
        bpmn_xml,
        version,
    )
    assert row is not None
    return _workflow(row)


async def set_status(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, status: str
) -> WorkflowRecord:
    row = await conn.fetchrow(
        f"UPDATE workflows w SET status = $2 WHERE id = $1 RETURNING {_WORKFLOW}",
        workflow_id,
        status,
    )
    assert row is not None
    return _workflow(row)


async def delete_workflow(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM workflow_executions WHERE workflow_id = $1", workflow_id)
    await conn.execute("DELETE FROM workflows WHERE id = $1", workflow_id)


async def running_executions(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM workflow_executions"
        " WHERE workflow_id = $1 AND status IN ('pending', 'running') ORDER BY id",
        workflow_id,
    )
    return [row["id"] for row in rows]


async def load_definitions(
    conn: Executor, keys: Sequence[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT v.workflow_id, v.version, v.definition FROM workflow_versions v"
        " JOIN unnest($1::uuid[], $2::text[]) AS k(id, version)"
        " ON v.workflow_id = k.id AND v.version = k.version",
        [key[0] for key in keys],
        [key[1] for key in keys],
    )
    return {(row["workflow_id"], row["version"]): row["definition"] for row in rows}


async def startable(
    conn: Executor, workflow_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str]]:
    """(status, current version) of each workflow that exists."""
    rows = await conn.fetch(
        "SELECT id, status, version FROM workflows WHERE id = ANY($1::uuid[])", list(workflow_ids)
    )
    return {row["id"]: (row["status"], row["version"]) for row in rows}


@dataclass(frozen=True)
class StartCheck:
    """What decides whether an execution may start for a user."""

    # The workflow's (status, current version); None if it does not exist.
    found: tuple[str, str] | None
    erased: bool
    # The request_id was used already.
    claimed: bool
    # An exclusive execution of the workflow runs for the user.
    running: bool


async def start_checks(
    conn: Executor,
    starts: Sequence[tuple[uuid.UUID, uuid.UUID, uuid.UUID | None]],
    method: str,
) -> list[StartCheck]:
    """The check of each (workflow, user, request_id), in order: one round trip
    for any number of starts."""
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
        [s[0] for s in starts],
        [s[1] for s in starts],
        [s[2] for s in starts],
        method,
    )
    return [
        StartCheck(
            (row["status"], row["version"]) if row["status"] is not None else None,
            row["erased"],
            row["claimed"],
            row["running"],
        )
        for row in rows
    ]


async def message_start_workflows(
    conn: Executor, names: Iterable[str]
) -> dict[str, list[tuple[uuid.UUID, str]]]:
    """The active workflows (id, version) that a message of each name starts."""
    rows = await conn.fetch(
        "SELECT v.start_message, w.id, w.version FROM workflows w JOIN workflow_versions v"
        " ON v.workflow_id = w.id AND v.version = w.version"
        " WHERE w.status = 'active' AND v.start_message = ANY($1::text[]) ORDER BY w.id",
        list(names),
    )
    found: dict[str, list[tuple[uuid.UUID, str]]] = defaultdict(list)
    for row in rows:
        found[row["start_message"]].append((row["id"], row["version"]))
    return found


# ---------------------------------------------------------------- executions

_STATE = (
    "e.id, e.workflow_id, e.workflow_version, e.user_id, e.status, e.variables, e.next_token,"
    " e.parent_execution_id, e.parent_token, e.started_at, e.current_node_id, e.actors,"
    " (SELECT coalesce(json_agg(json_build_array(t.token, t.element_id, t.scope_token,"
    "  t.arrived_via)), '[]') FROM execution_tokens t WHERE t.execution_id = e.id) AS tokens"
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
        tokens={t[0]: Token(t[0], t[1], t[2], t[3]) for t in row["tokens"]},
        parent=(parent, row["parent_token"]) if parent else None,
        started_at=row["started_at"],
        last_element=row["current_node_id"],
        actors=tuple(row["actors"]),
    )


# ---------------------------------------------------------------- user locks

# An advisory lock per user (this key and a hash of the user id), taken before
# the tombstones are read or any row is locked, several users in key order.
# Starts and steps take it shared. A publish takes it alone, so a step that
# subscribes and a publish that would buffer see each other's commit; an erase
# takes it alone, so it waits for the work in flight to commit, and the work
# after it sees the tombstone. A transaction holding it alone may take it shared
# again (a publish's step): PostgreSQL grants a transaction what it holds.
USER_LOCK = 0x6C77_0075
SHARED, ALONE = "pg_advisory_xact_lock_shared", "pg_advisory_xact_lock"


def _lock_users(users: str, lock: str) -> str:
    """Locks of the users the query `users` gives, in key order: two transactions
    never wait on each other across an erase or a publish queued between them."""
    return (
        f"SELECT count({lock}({USER_LOCK}, k)) FROM"
        f" (SELECT DISTINCT hashtext(u::text) AS k FROM ({users}) AS x(u) ORDER BY k) s"
    )


async def lock_users(conn: asyncpg.Connection, user_ids: Iterable[uuid.UUID]) -> None:
    """A start's or a step's: shared."""
    await conn.execute(_lock_users("SELECT unnest($1::uuid[])", SHARED), list(set(user_ids)))


async def lock_users_alone(conn: asyncpg.Connection, user_ids: Iterable[uuid.UUID]) -> None:
    """A publish's or an erase's: exclusive."""
    await conn.execute(_lock_users("SELECT unnest($1::uuid[])", ALONE), list(set(user_ids)))


async def _lock_users_of(
    conn: asyncpg.Connection, ids: list[uuid.UUID], *, skip_locked: bool
) -> list[uuid.UUID]:
    """Takes the locks of the executions' users; returns the executions to lock.
    Skipping: without waiting, and leaving out the executions of a user being erased
    or published to (their step is tried again later)."""
    if not skip_locked:
        await conn.execute(
            _lock_users(
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


@dataclass(frozen=True)
class NewExecution:
    state: ExecutionState
    exclusive: bool


async def insert_executions(
    conn: asyncpg.Connection, executions: Sequence[NewExecution]
) -> set[uuid.UUID]:
    """Inserts executions before their first step; returns those inserted
    (an exclusive one is left out when its user runs that workflow already)."""
    q = _Statement()
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


async def child_executions(
    conn: asyncpg.Connection, parents: Sequence[tuple[uuid.UUID, int]]
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT e.id FROM workflow_executions e"
        " JOIN unnest($1::uuid[], $2::int[]) AS p(id, token)"
        " ON e.parent_execution_id = p.id AND e.parent_token = p.token"
        " WHERE e.status IN ('pending', 'running')",
        [p[0] for p in parents],
        [p[1] for p in parents],
    )
    return [row["id"] for row in rows]


@dataclass
class Writes:
    """Rows of many executions' steps, written in one statement."""

    updated: list[ExecutionState] = field(default_factory=list)
    removed_tokens: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    consumed_timers: list[tuple[uuid.UUID, int, str]] = field(default_factory=list)
    tokens: list[tuple[uuid.UUID, int, str, int | None, str | None]] = field(default_factory=list)
    timers: list[tuple[uuid.UUID, int, str, datetime, int | None]] = field(default_factory=list)
    subscriptions: list[tuple[uuid.UUID, int, str, str, uuid.UUID]] = field(default_factory=list)
    jobs: list[
        tuple[uuid.UUID, int, str, str, uuid.UUID, uuid.UUID, dict[str, Any], int, datetime]
    ] = field(default_factory=list)
    incidents: list[tuple[uuid.UUID, int, str, bool, str, datetime]] = field(default_factory=list)
    history: list[tuple[uuid.UUID, str, str, str, datetime]] = field(default_factory=list)
    deliveries: list[tuple[int, uuid.UUID]] = field(default_factory=list)


class _Statement:
    """One statement of data-modifying CTEs: each table's rows arrive as arrays."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any, sql_type: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{sql_type}"

    def unnest(self, rows: Sequence[Sequence[Any]], types: Sequence[str]) -> str:
        columns = [self.arg([row[i] for row in rows], f"{t}[]") for i, t in enumerate(types)]
        return f"unnest({', '.join(columns)})"

    def add(self, name: str, sql: str) -> None:
        self.ctes.append(f"{name} AS ({sql})")


_EXECUTION_COLUMNS = (
    "id, workflow_id, workflow_version, user_id, status, variables, current_node_id,"
    " started_at, completed_at, error_message, exclusive, parent_execution_id, parent_token,"
    " next_token"
)
_EXECUTION_TYPES = (
    "uuid", "uuid", "text", "uuid", "text", "jsonb", "text", "timestamptz", "timestamptz",
    "text", "bool", "uuid", "int", "int", "jsonb",
)  # fmt: skip


_UPDATE_TYPES = ("uuid", "text", "jsonb", "text", "timestamptz", "text", "int")


def _execution_row(execution: NewExecution) -> tuple[Any, ...]:
    s = execution.state
    parent = s.parent
    return (
        s.id, s.workflow_id, s.version, s.user_id, s.status, s.variables, current_node(s),
        s.started_at, s.completed_at, s.error_message, execution.exclusive,
        parent[0] if parent else None, parent[1] if parent else None, s.next_token, s.actors,
    )  # fmt: skip


async def write(conn: Executor, w: Writes) -> None:
    """Writes the steps in one statement (jobs carry the current trace). A timer
    consumed and armed again in the same step is updated, not deleted: one
    statement must not touch a row twice."""
    q = _Statement()
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
    rearmed = {(t[0], t[1], t[2]) for t in w.timers}
    consumed = [t for t in w.consumed_timers if t not in rearmed]
    if consumed:
        q.add(
            "consumed_timers",
            f"DELETE FROM timers t USING {q.unnest(consumed, ('uuid', 'int', 'text'))}"
            " AS r(id, token, element) WHERE t.execution_id = r.id AND t.token = r.token"
            " AND t.element_id = r.element",
        )
    inserts: tuple[tuple[str, str, Sequence[Sequence[Any]], str, tuple[str, ...], str], ...] = (
        ("tokens", "execution_tokens", w.tokens,
         "execution_id, token, element_id, scope_token, arrived_via",
         ("uuid", "int", "text", "int", "text"), ""),
        ("timers", "timers", w.timers, "execution_id, token, element_id, due_at, repeat",
         ("uuid", "int", "text", "timestamptz", "int"),
         " ON CONFLICT (execution_id, token, element_id)"
         " DO UPDATE SET due_at = excluded.due_at, repeat = excluded.repeat"),
        ("subscriptions", "message_subscriptions", w.subscriptions,
         "execution_id, token, element_id, message_name, user_id",
         ("uuid", "int", "text", "text", "uuid"), " ON CONFLICT DO NOTHING"),
        ("jobs", "jobs", w.jobs,
         "execution_id, token, job_type, element_id, workflow_id, user_id, headers, retries,"
         " available_at",
         ("uuid", "int", "text", "text", "uuid", "uuid", "jsonb", "int", "timestamptz"), ""),
        ("incidents", "incidents", w.incidents,
         "execution_id, token, element_id, from_job, error_message, created_at",
         ("uuid", "int", "text", "bool", "text", "timestamptz"), ""),
        ("history", "execution_history", w.history,
         "execution_id, element_id, element_type, state, at",
         ("uuid", "text", "text", "text", "timestamptz"), ""),
    )  # fmt: skip
    for name, table, rows, columns, types, conflict in inserts:
        if rows:
            extra, value = "", ""
            if table == "jobs":
                extra, value = ", traceparent", f", {q.arg(current_traceparent(), 'text')}"
            q.add(
                name,
                f"INSERT INTO {table} ({columns}{extra}) SELECT r.*{value}"
                f" FROM {q.unnest(rows, types)} AS r({columns}){conflict}",
            )
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


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Buffered:
    id: int
    name: str
    variables: dict[str, Any]


async def buffered_messages(
    conn: asyncpg.Connection,
    wanted: Sequence[tuple[uuid.UUID, uuid.UUID, str]],
    now: datetime,
) -> dict[tuple[uuid.UUID, str], Buffered]:
    """For each (execution, user, message name): the oldest live buffered message
    the execution has not had yet."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (w.execution_id, w.name) w.execution_id, m.id, m.name, m.variables"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS w(execution_id, user_id, name)"
        " JOIN messages m ON m.user_id = w.user_id AND m.name = w.name AND m.expires_at > $4"
        "  AND NOT (w.execution_id = ANY(m.delivered_to))"
        " ORDER BY w.execution_id, w.name, m.id",
        *([row[i] for row in wanted] for i in range(3)),
        now,
    )
    return {
        (row["execution_id"], row["name"]): Buffered(row["id"], row["name"], row["variables"])
        for row in rows
    }


@dataclass(frozen=True)
class NewMessage:
    name: str
    user_id: uuid.UUID
    message_id: str | None
    variables: dict[str, Any]
    ttl: timedelta


_INSERT_MESSAGES = (
    "INSERT INTO messages (name, user_id, message_id, variables, published_at, expires_at)"
)


def _message_keys(messages: Sequence[NewMessage]) -> list[list[Any]]:
    """The names, users and message_ids of `messages`: the first three parameters."""
    return [
        [m.name for m in messages],
        [m.user_id for m in messages],
        [m.message_id for m in messages],
    ]


async def record_message_ids(
    conn: asyncpg.Connection, messages: Sequence[NewMessage], now: datetime
) -> set[uuid.UUID]:
    """Remembers the message_ids of messages of distinct users, for deduplication;
    returns the users whose message_id was new. The rows hold no variables and
    expired before any clock reading ('-infinity'), so no step receives one,
    whatever time it read."""
    rows = await conn.fetch(
        f"{_INSERT_MESSAGES} SELECT r.name, r.user_id, r.message_id, '{{}}'::jsonb,"
        " $4::timestamptz, '-infinity'::timestamptz"
        " FROM unnest($1::text[], $2::uuid[], $3::text[]) AS r(name, user_id, message_id)"
        " ON CONFLICT (message_id) DO NOTHING RETURNING user_id",
        *_message_keys(messages),
        now,
    )
    return {row["user_id"] for row in rows}


async def buffer_messages(
    conn: asyncpg.Connection, messages: Sequence[NewMessage], now: datetime
) -> None:
    """Keeps messages for their time to live; the row of a message_id this
    transaction recorded becomes the buffered message."""
    await conn.execute(
        f"{_INSERT_MESSAGES} SELECT r.name, r.user_id, r.message_id, r.variables,"
        " $5::timestamptz, $5::timestamptz + r.ttl"
        " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[], $6::interval[])"
        " AS r(name, user_id, message_id, variables, ttl) ON CONFLICT (message_id)"
        " DO UPDATE SET variables = excluded.variables, expires_at = excluded.expires_at",
        *_message_keys(messages),
        [m.variables for m in messages],
        now,
        [m.ttl for m in messages],
    )


async def subscribers(
    conn: asyncpg.Connection, wanted: Sequence[tuple[uuid.UUID, str]]
) -> dict[uuid.UUID, list[tuple[uuid.UUID, int, str]]]:
    """Who waits for each (user, message name), by user: the oldest token of
    each execution, with its element."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (s.execution_id) s.user_id, s.execution_id, s.token, s.element_id"
        " FROM message_subscriptions s JOIN unnest($1::uuid[], $2::text[]) AS w(user_id, name)"
        " ON s.user_id = w.user_id AND s.message_name = w.name"
        " ORDER BY s.execution_id, s.token",
        [user_id for user_id, _ in wanted],
        [name for _, name in wanted],
    )
    found: dict[uuid.UUID, list[tuple[uuid.UUID, int, str]]] = defaultdict(list)
    for row in rows:
        found[row["user_id"]].append((row["execution_id"], row["token"], row["element_id"]))
    return found


async def erase_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Keeps the tombstone and deletes what is held of the user, after the
    user's starts, publishes and steps in flight committed."""
    await lock_users_alone(conn, [user_id])
    await tombstones.bury(conn, user_id)
    await conn.execute("DELETE FROM messages WHERE user_id = $1", user_id)
    result = await conn.execute("DELETE FROM workflow_executions WHERE user_id = $1", user_id)
    return int(result.split()[-1])


# ---------------------------------------------------------------- timers


@dataclass(frozen=True)
class DueTimer:
    execution_id: uuid.UUID
    token: int
    element_id: str
    due_at: datetime
    repeat: int | None


async def claim_due_timers(
    conn: asyncpg.Connection, now: datetime, limit: int, execution_id: uuid.UUID | None = None
) -> list[DueTimer]:
    """Due timers (of one execution, if given) that no other transaction holds."""
    rows = await conn.fetch(
        "SELECT execution_id, token, element_id, due_at, repeat FROM timers"
        " WHERE due_at <= $1 AND ($3::uuid IS NULL OR execution_id = $3)"
        " ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
        execution_id,
    )
    return [DueTimer(*row) for row in rows]


async def next_due(conn: Executor) -> datetime | None:
    due: datetime | None = await conn.fetchval("SELECT min(due_at) FROM timers")
    return due


async def postpone_timers(
    conn: asyncpg.Connection, timers: Sequence[DueTimer], until: datetime
) -> None:
    await conn.execute(
        "UPDATE timers t SET due_at = $4 FROM unnest($1::uuid[], $2::int[], $3::text[])"
        " AS r(id, token, element) WHERE t.execution_id = r.id AND t.token = r.token"
        " AND t.element_id = r.element",
        [t.execution_id for t in timers],
        [t.token for t in timers],
        [t.element_id for t in timers],
        until,
    )


# ---------------------------------------------------------------- jobs


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


def _job(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        **{name: row[name] for name in _JOB_FIELDS},
        variables=row["variables"] or {},
        actors=tuple(row["actors"]),
    )


# The built-in tasks' calls to the users service as `lifecycle outbox` shows them:
# waiting (retried with backoff), or out of retries (an incident each, which
# ResolveIncident retries). A job keeps no creation time, hence no oldest.
WAITING_USERS_CALLS = f"""
SELECT CASE state WHEN 'failed' THEN 'incident' ELSE 'pending' END AS kind,
       job_type AS topic, count(*) AS messages, NULL::timestamptz AS oldest,
       max(error_message) AS last_error
FROM jobs WHERE job_type IN ('{SET_STAGE}', '{UPDATE_ATTRIBUTES}')
GROUP BY 1, 2
"""

_JOB_FIELDS = (
    "execution_id",
    "token",
    "job_type",
    "element_id",
    "workflow_id",
    "user_id",
    "headers",
    "retries",
    "failures",
    "state",
    "available_at",
    "traceparent",
)
_JOB = (
    "j.execution_id, j.token, j.job_type, j.element_id, j.workflow_id, j.user_id, j.headers,"
    " j.retries, j.failures, j.state, j.available_at, j.traceparent"
)


async def activate_jobs(
    conn: asyncpg.Connection,
    job_types: Sequence[str],
    worker: str,
    *,
    limit: int,
    now: datetime,
    deadline: datetime,
) -> list[JobRecord]:
    rows = await conn.fetch(
        "WITH due AS (SELECT execution_id, token FROM jobs"
        "  WHERE job_type = ANY($1::text[]) AND state <> 'failed' AND available_at <= $3"
        "  ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " UPDATE jobs j SET state = 'activated', available_at = $4, worker = $5"
        " FROM due JOIN workflow_executions e ON e.id = due.execution_id"
        " WHERE j.execution_id = due.execution_id AND j.token = due.token"
        f" RETURNING {_JOB}, e.variables, e.actors",
        list(job_types),
        limit,
        now,
        deadline,
        worker,
    )
    return [_job(row) for row in rows]


async def get_job(
    conn: asyncpg.Connection, execution_id: uuid.UUID, token: int, *, lock: bool = False
) -> JobRecord | None:
    suffix = " FOR UPDATE OF j" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_JOB}, '{{}}'::jsonb AS variables, '{{}}'::text[] AS actors FROM jobs j"
        f" WHERE j.execution_id = $1 AND j.token = $2{suffix}",
        execution_id,
        token,
    )
    return _job(row) if row else None


async def retry_job(
    conn: asyncpg.Connection,
    execution_id: uuid.UUID,
    token: int,
    *,
    retries: int,
    available_at: datetime,
    error: str,
) -> None:
    await conn.execute(
        "UPDATE jobs SET state = 'ready', retries = $3, failures = failures + 1,"
        " available_at = $4, error_message = $5, worker = NULL"
        " WHERE execution_id = $1 AND token = $2",
        execution_id,
        token,
        retries,
        available_at,
        error,
    )


async def fail_job(
    conn: asyncpg.Connection, execution_id: uuid.UUID, token: int, error: str, now: datetime
) -> None:
    """Retries ran out (or the error was not caught): the job waits for ResolveIncident."""
    await conn.execute(
        "UPDATE jobs SET state = 'failed', retries = 0, failures = failures + 1,"
        " error_message = $3, worker = NULL WHERE execution_id = $1 AND token = $2",
        execution_id,
        token,
        error,
    )
    element = await conn.fetchval(
        "SELECT element_id FROM jobs WHERE execution_id = $1 AND token = $2", execution_id, token
    )
    await conn.execute(
        "INSERT INTO incidents (execution_id, token, element_id, from_job, error_message,"
        " created_at) VALUES ($1, $2, $3, true, $4, $5)",
        execution_id,
        token,
        element,
        error,
        now,
    )


# ---------------------------------------------------------------- incidents


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


async def get_incident(conn: asyncpg.Connection, incident_id: uuid.UUID) -> IncidentRecord | None:
    row = await conn.fetchrow(
        "SELECT id, execution_id, token, element_id, from_job, error_message, created_at,"
        " resolved_at FROM incidents WHERE id = $1",
        incident_id,
    )
    return IncidentRecord(*row) if row else None


async def resolve_incident(
    conn: asyncpg.Connection, incident: IncidentRecord, retries: int, now: datetime
) -> None:
    await conn.execute("UPDATE incidents SET resolved_at = $2 WHERE id = $1", incident.id, now)
    if incident.from_job:
        await conn.execute(
            "UPDATE jobs SET state = 'ready', retries = $3, available_at = $4"
            " WHERE execution_id = $1 AND token = $2",
            incident.execution_id,
            incident.token,
            retries,
            now,
        )


async def open_incident_tokens(conn: asyncpg.Connection, execution_id: uuid.UUID) -> set[int]:
    rows = await conn.fetch(
        "SELECT token FROM incidents WHERE execution_id = $1 AND resolved_at IS NULL",
        execution_id,
    )
    return {row["token"] for row in rows}


# ---------------------------------------------------------------- reads


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
    history: list[tuple[str, str, str, datetime]]
    incidents: list[IncidentRecord]


_VIEW = (
    "e.id, e.workflow_id, e.workflow_version, e.user_id, e.status, e.variables,"
    " array(SELECT DISTINCT t.element_id FROM execution_tokens t WHERE t.execution_id = e.id"
    "  ORDER BY 1) AS nodes, e.started_at, e.completed_at, e.error_message"
)


def _view(
    row: asyncpg.Record, history: list[Any], incidents: list[IncidentRecord]
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
        "SELECT id, execution_id, token, element_id, from_job, error_message, created_at,"
        " resolved_at FROM incidents WHERE execution_id = $1 ORDER BY created_at, id",
        execution_id,
    )
    return _view(row, [tuple(h) for h in history], [IncidentRecord(*i) for i in incidents])


async def list_executions(
    conn: Executor,
    workflow_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    statuses: list[str],
    *,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ExecutionView]:
    rows = await conn.fetch(
        f"SELECT {_VIEW} FROM workflow_executions e"
        " WHERE ($1::uuid IS NULL OR workflow_id = $1) AND ($2::uuid IS NULL OR user_id = $2)"
        "   AND (cardinality($3::text[]) = 0 OR status = ANY($3))"
        "   AND ($4::timestamptz IS NULL OR (started_at, id) < ($4, $5::uuid))"
        " ORDER BY started_at DESC, id DESC LIMIT $6",
        workflow_id,
        user_id,
        statuses,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_view(row, [], []) for row in rows]


# ---------------------------------------------------------------- retention


async def delete_finished(conn: asyncpg.Connection, before: datetime, batch: int) -> int:
    result = await conn.execute(
        "DELETE FROM workflow_executions WHERE id IN (SELECT id FROM workflow_executions"
        " WHERE completed_at < $1 AND status IN ('completed', 'failed', 'cancelled')"
        " ORDER BY completed_at LIMIT $2)",
        before,
        batch,
    )
    return int(result.split()[-1])


async def delete_stale_messages(conn: asyncpg.Connection, before: datetime) -> int:
    result = await conn.execute(
        "DELETE FROM messages WHERE expires_at < $1 AND published_at < $1", before
    )
    return int(result.split()[-1])
