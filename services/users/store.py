"""The users service's SQL. Every function runs on the connection it is given,
inside the caller's transaction where one is open."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from conditions import STAGE_ENTRY_JOIN, SqlCondition
from runtime.chains import Chain
from runtime.database import Executor
from runtime.structs import JsonObject, from_unix_micros
from services.users.domain import (
    ImportRow,
    MatchBatch,
    Profile,
    StageChange,
    Transition,
    User,
    UserChange,
    UserFilter,
)

_USER_COLUMNS = "id, email, current_lifecycle_stage, attributes, created_at, updated_at"


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        stage=row["current_lifecycle_stage"],
        attributes=row["attributes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _transition(row: asyncpg.Record) -> Transition:
    return Transition(
        id=row["id"],
        user_id=row["user_id"],
        from_stage=row["from_stage"],
        to_stage=row["to_stage"],
        transitioned_at=row["transitioned_at"],
        workflow_execution_id=row["workflow_execution_id"],
        metadata=row["metadata"] or {},
    )


async def insert_user(
    conn: asyncpg.Connection, email: str, stage: str, attributes_json: str
) -> User | None:
    """The new user, or None when the email is taken."""
    row = await conn.fetchrow(
        "INSERT INTO users (email, current_lifecycle_stage, attributes)"
        " VALUES ($1, $2, jsonb_strip_nulls($3::text::jsonb))"
        f" ON CONFLICT DO NOTHING RETURNING {_USER_COLUMNS}",
        email,
        stage,
        attributes_json,
    )
    return _user(row) if row else None


async def insert_first_transition(
    conn: asyncpg.Connection, user: User, metadata: JsonObject
) -> Transition:
    row = await conn.fetchrow(
        "INSERT INTO user_lifecycle_history"
        " (user_id, from_stage, to_stage, transitioned_at, metadata)"
        " VALUES ($1, NULL, $2, $3, $4) RETURNING *",
        user.id,
        user.stage,
        user.created_at,
        metadata,
    )
    assert row is not None
    return _transition(row)


async def get_user(conn: Executor, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1{suffix}", user_id)
    return _user(row) if row else None


async def get_user_by_email(conn: Executor, email: str) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE lower(email) = lower($1)", email.strip()
    )
    return _user(row) if row else None


async def update_user(
    conn: asyncpg.Connection, user_id: uuid.UUID, change: UserChange
) -> User | None:
    """Applies the change; None when the new email belongs to another user."""
    try:
        row = await conn.fetchrow(
            "UPDATE users SET email = coalesce($2, email), attributes = CASE"
            "  WHEN $3::text IS NULL THEN attributes"
            "  WHEN $4 THEN jsonb_strip_nulls($3::text::jsonb)"
            "  ELSE jsonb_merge_patch(attributes, $3::text::jsonb) END"
            f" WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id,
            change.email,
            change.attributes_json,
            change.replace_attributes,
        )
    except asyncpg.UniqueViolationError:
        return None
    return _user(row) if row else None


async def delete_user(conn: asyncpg.Connection, user_id: uuid.UUID, actors: Chain) -> None:
    """Deletes the user (their history goes with them) and records the erase:
    which user, when, who asked; nothing else of them."""
    await conn.execute(
        "WITH gone AS (DELETE FROM users WHERE id = $1 RETURNING id)"
        " INSERT INTO user_erasures (user_id, actors) SELECT id, $2 FROM gone",
        user_id,
        list(actors),
    )


@dataclass(frozen=True)
class TransitionOutcome:
    previous_stage: str
    user: User | None
    transition: Transition | None


_TRANSITION = f"""
WITH current_stage AS (
  SELECT id, current_lifecycle_stage AS stage FROM users WHERE id = $1 FOR UPDATE
), moved AS (
  UPDATE users u SET current_lifecycle_stage = $2
  FROM current_stage c WHERE u.id = c.id AND (c.stage <> $2 OR $3)
  RETURNING u.{_USER_COLUMNS.replace(", ", ", u.")}
), recorded AS (
  INSERT INTO user_lifecycle_history
    (user_id, from_stage, to_stage, transitioned_at, workflow_execution_id, metadata)
  SELECT m.id, c.stage, $2, clock_timestamp(), $4, $5 FROM moved m, current_stage c
  RETURNING id AS transition_id, transitioned_at, workflow_execution_id, metadata, from_stage
)
SELECT c.stage AS previous_stage, m.*, r.*
FROM current_stage c LEFT JOIN moved m ON true LEFT JOIN recorded r ON true
"""


async def transition(
    conn: asyncpg.Connection, user_id: uuid.UUID, change: StageChange
) -> TransitionOutcome | None:
    """Moves the user and records it in one statement; concurrent moves of one
    user queue on the row lock, so each records the stage the previous one left.
    None when the user does not exist."""
    row = await conn.fetchrow(
        _TRANSITION,
        user_id,
        change.to_stage,
        change.allow_same_stage,
        change.workflow_execution_id,
        change.metadata,
    )
    if row is None:
        return None
    if row["id"] is None:
        return TransitionOutcome(row["previous_stage"], None, None)
    user = _user(row)
    recorded = Transition(
        id=row["transition_id"],
        user_id=user.id,
        from_stage=row["from_stage"],
        to_stage=change.to_stage,
        transitioned_at=row["transitioned_at"],
        workflow_execution_id=row["workflow_execution_id"],
        metadata=row["metadata"] or {},
    )
    return TransitionOutcome(row["previous_stage"], user, recorded)


async def get_transition(conn: Executor, transition_id: int) -> Transition | None:
    row = await conn.fetchrow("SELECT * FROM user_lifecycle_history WHERE id = $1", transition_id)
    return _transition(row) if row else None


async def list_users(
    conn: Executor,
    where: UserFilter,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[User]:
    # Only the filters given, so that the plan walks idx_users_created_at_id from
    # the cursor (a generic plan of optional filters sorts every row instead).
    args: list[Any] = [limit]
    filters = []
    for sql, value in (
        ("current_lifecycle_stage = ANY(${})", list(where.stages) or None),
        ("created_at >= ${}", where.created_after),
        ("created_at < ${}", where.created_before),
    ):
        if value is not None:
            args.append(value)
            filters.append(sql.format(len(args)))
    if cursor is not None:
        args.extend(cursor)
        filters.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    where_sql = f"WHERE {' AND '.join(filters)} " if filters else ""
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users {where_sql}ORDER BY created_at, id LIMIT $1", *args
    )
    return [_user(row) for row in rows]


async def list_transitions(
    conn: Executor, user_id: uuid.UUID, cursor: tuple[datetime, int] | None, limit: int
) -> list[Transition]:
    rows = await conn.fetch(
        "SELECT * FROM user_lifecycle_history WHERE user_id = $1 "
        "  AND ($2::timestamptz IS NULL OR (transitioned_at, id) < ($2, $3::bigint)) "
        "ORDER BY transitioned_at DESC, id DESC LIMIT $4",
        user_id,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_transition(row) for row in rows]


async def user_exists(conn: Executor, user_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id))


@dataclass(frozen=True)
class MergedUser:
    """An existing user an import row was merged into."""

    index: int
    user_id: uuid.UUID
    stage: str
    old_attributes: dict[str, Any]
    attributes: dict[str, Any]
    # None when the row changed nothing.
    updated_at: datetime | None
    transition: Transition | None


@dataclass(frozen=True)
class CreatedUser:
    """A user an import row created."""

    index: int
    user_id: uuid.UUID
    stage: str
    created_at: datetime


_IMPORT_EXISTING = """
WITH input AS (
  SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[])
    AS i(idx, lemail, stage, patch)
), locked AS (
  SELECT u.id, i.idx, u.current_lifecycle_stage AS old_stage, u.attributes AS old_attrs,
         coalesce(i.stage, u.current_lifecycle_stage) AS new_stage,
         jsonb_merge_patch(u.attributes, i.patch::jsonb) AS new_attrs
  FROM users u JOIN input i ON lower(u.email) = i.lemail
  FOR UPDATE OF u
), updated AS (
  UPDATE users u SET current_lifecycle_stage = l.new_stage, attributes = l.new_attrs
  FROM locked l
  WHERE u.id = l.id AND (l.new_stage <> l.old_stage OR l.new_attrs <> l.old_attrs)
  RETURNING u.id, u.updated_at
), recorded AS (
  INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at, metadata)
  SELECT l.id, l.old_stage, l.new_stage, clock_timestamp(), $5::jsonb
  FROM locked l WHERE l.new_stage <> l.old_stage
  RETURNING id, user_id, transitioned_at
)
SELECT l.idx, l.id, l.old_stage, l.new_stage, l.old_attrs, l.new_attrs,
       up.updated_at, r.id AS transition_id, r.transitioned_at
FROM locked l LEFT JOIN updated up ON up.id = l.id LEFT JOIN recorded r ON r.user_id = l.id
"""

_IMPORT_NEW = """
WITH input AS (
  SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[])
    AS i(idx, email, stage, attrs)
), inserted AS (
  INSERT INTO users (email, current_lifecycle_stage, attributes)
  SELECT email, stage, jsonb_strip_nulls(attrs::jsonb) FROM input ORDER BY idx
  ON CONFLICT DO NOTHING
  RETURNING id, email, current_lifecycle_stage, created_at
), recorded AS (
  INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at, metadata)
  SELECT id, NULL, current_lifecycle_stage, created_at, $5::jsonb FROM inserted
)
SELECT i.idx, ins.id, ins.current_lifecycle_stage, ins.created_at
FROM inserted ins
JOIN input i ON lower(i.email) = lower(ins.email)
"""


async def import_existing(
    conn: asyncpg.Connection, rows: Sequence[ImportRow], metadata: JsonObject
) -> list[MergedUser]:
    """Merges rows into the users they name, a move recorded with `metadata`;
    rows naming no user are left out."""
    records = await conn.fetch(
        _IMPORT_EXISTING,
        [r.index for r in rows],
        [r.email.lower() for r in rows],
        [r.stage for r in rows],
        [r.attributes_json for r in rows],
        metadata,
    )
    return [_merged(rec, metadata) for rec in records]


def _merged(rec: asyncpg.Record, metadata: JsonObject) -> MergedUser:
    transition = None
    if rec["transition_id"] is not None:
        transition = Transition(
            id=rec["transition_id"],
            user_id=rec["id"],
            from_stage=rec["old_stage"],
            to_stage=rec["new_stage"],
            transitioned_at=rec["transitioned_at"],
            workflow_execution_id=None,
            metadata=metadata,
        )
    return MergedUser(
        index=rec["idx"],
        user_id=rec["id"],
        stage=rec["new_stage"],
        old_attributes=rec["old_attrs"],
        attributes=rec["new_attrs"],
        updated_at=rec["updated_at"],
        transition=transition,
    )


async def import_new(
    conn: asyncpg.Connection, rows: Sequence[ImportRow], default_stage: str, metadata: JsonObject
) -> list[CreatedUser]:
    """Inserts rows as new users, their first stage recorded with `metadata`;
    rows whose email was taken meanwhile are left out."""
    records = await conn.fetch(
        _IMPORT_NEW,
        [r.index for r in rows],
        [r.email for r in rows],
        [r.stage or default_stage for r in rows],
        [r.attributes_json for r in rows],
        metadata,
    )
    return [
        CreatedUser(rec["idx"], rec["id"], rec["current_lifecycle_stage"], rec["created_at"])
        for rec in records
    ]


@dataclass(frozen=True)
class MatchQuery:
    """A compiled condition (domain.ConditionQuery as SQL) and what else
    restricts the users it looks at."""

    condition: SqlCondition
    stages: tuple[str, ...] = ()
    user_ids: tuple[uuid.UUID, ...] = ()
    limit: int = 0
    # Also the earliest moment one of the users who do not match starts to by
    # time alone (no limit then: it reads every user who may match later).
    next_entry: bool = False


def _match_sql(
    query: MatchQuery, columns: str, rows: str, *, keep: str | None = None
) -> tuple[str, list[Any]]:
    """The query of the users `rows` selects; with `keep`, only those whose
    `columns` it holds for."""
    params = list(query.condition.params)

    def bind(value: Any, cast: str) -> str:
        params.append(value)
        return f"${len(params)}::{cast}"

    where = [rows]
    if query.stages:
        where.append(f"u.current_lifecycle_stage = ANY({bind(list(query.stages), 'text[]')})")
    if query.user_ids:
        where.append(f"u.id = ANY({bind(list(query.user_ids), 'uuid[]')})")
    join = " ".join(query.condition.joins)
    sql = f"SELECT {columns} FROM users u {join} WHERE {' AND '.join(where)}"
    if keep is not None:
        # OFFSET 0 keeps the columns computed once.
        sql = f"SELECT * FROM ({sql} OFFSET 0) u WHERE {keep}"
    return sql, params


def _micros(moment: str) -> str:
    return f"(extract(epoch FROM {moment}) * 1000000)::bigint"


def match_statement(query: MatchQuery, *, candidates: bool) -> tuple[str, list[Any]]:
    """The statement of the matching users in id order, a row each: the id as
    text, true, and when the match may end (microseconds since the Unix epoch;
    0: never). With `candidates` (a condition that reads time), also the users
    who may start to match by time alone (of those who pass the part of the
    condition time never changes): false, and when they may."""
    condition = query.condition
    flip = condition.flip or "NULL::interval"
    matched, rows = (
        (condition.timed or "true", condition.where) if candidates else ("true", condition.matches)
    )
    columns = f"u.id, {matched} AS matched, {flip} AS flip"
    keep = condition.may_match("matched", "flip") if candidates else None
    sql, params = _match_sql(query, columns, rows, keep=keep)
    if condition.flip is None:
        moment = "0"
    else:
        # The flips of those who do not match are negative, their entry is ahead.
        exit_at = f"coalesce({_micros(condition.exit_at('flip'))}, 0)"
        moment = f"CASE WHEN matched THEN {exit_at} ELSE {_micros(condition.entry_at('flip'))} END"
    limit = ""
    if query.limit:
        params.append(query.limit)
        limit = f" LIMIT ${len(params)}::int"
    return (
        f"SELECT id::text AS id, matched, {moment} AS micros FROM ({sql}) m ORDER BY m.id{limit}",
        params,
    )


async def _bound(conn: asyncpg.Connection, timeout_ms: int) -> None:
    """Bounds every statement of the transaction: a costly condition (a regex on
    long texts, say) fails instead of holding the database. And plans its cursor
    for all its rows (by default, for the first tenth: an index scan in id order
    over every user)."""
    await conn.execute(
        "SELECT set_config('statement_timeout', $1, true),"
        " set_config('cursor_tuple_fraction', '1', true)",
        str(timeout_ms),
    )


async def match_users(
    conn: asyncpg.Connection, query: MatchQuery, timeout_ms: int, batch_size: int
) -> AsyncIterator[MatchBatch]:
    """The matching users in batches of at most `batch_size`, in id order, from
    one scan and one snapshot: a cursor, so that the users service holds one
    batch at a time however many match."""
    # A condition that reads no time has no users who may enter later.
    candidates = query.next_entry and query.condition.timed is not None
    sql, params = match_statement(query, candidates=candidates)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await _bound(conn, timeout_ms)
        cursor = await conn.cursor(sql, *params)
        while rows := await cursor.fetch(batch_size):
            matches = [row for row in rows if row["matched"]]
            entries = [row["micros"] for row in rows if not row["matched"]]
            yield MatchBatch(
                [row["id"] for row in matches],
                [row["micros"] for row in matches],
                from_unix_micros(min(entries)) if entries else None,
            )


async def count_users(conn: asyncpg.Connection, query: MatchQuery, timeout_ms: int) -> int:
    # Every parameter of a condition is in its test, where PostgreSQL learns its type.
    sql, params = _match_sql(query, "count(*)", query.condition.matches)
    async with conn.transaction(readonly=True):
        await _bound(conn, timeout_ms)
        return int(await conn.fetchval(sql, *params))


async def get_profiles(conn: Executor, user_ids: Sequence[uuid.UUID]) -> list[Profile]:
    rows = await conn.fetch(
        "SELECT u.id, u.current_lifecycle_stage, u.attributes::text AS attributes, u.created_at,"
        f" stage_entry.entered_at FROM users u {STAGE_ENTRY_JOIN}"
        " WHERE u.id = ANY($1::uuid[])",
        list(user_ids),
    )
    return [
        Profile(
            user_id=row["id"],
            stage=row["current_lifecycle_stage"],
            attributes_json=row["attributes"],
            created_at=row["created_at"],
            stage_entered_at=row["entered_at"],
        )
        for row in rows
    ]
