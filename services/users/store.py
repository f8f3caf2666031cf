"""The users service's SQL. Every function runs on the connection it is given,
inside the caller's transaction where one is open."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.users.domain import StageChange, Transition, User, UserFilter

IMPORT_METADATA = {"source": "import"}
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
    conn: asyncpg.Connection, email: str, stage: str, attributes: dict[str, Any]
) -> User | None:
    """The new user, or None when the email is taken."""
    row = await conn.fetchrow(
        "INSERT INTO users (email, current_lifecycle_stage, attributes) VALUES ($1, $2, $3) "
        f"ON CONFLICT DO NOTHING RETURNING {_USER_COLUMNS}",
        email,
        stage,
        attributes,
    )
    return _user(row) if row else None


async def insert_first_transition(conn: asyncpg.Connection, user: User, source: str) -> Transition:
    row = await conn.fetchrow(
        "INSERT INTO user_lifecycle_history"
        " (user_id, from_stage, to_stage, transitioned_at, metadata)"
        " VALUES ($1, NULL, $2, $3, $4) RETURNING *",
        user.id,
        user.stage,
        user.created_at,
        {"source": source},
    )
    assert row is not None
    return _transition(row)


async def get_user(
    conn: asyncpg.Connection, user_id: uuid.UUID, *, lock: bool = False
) -> User | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1{suffix}", user_id)
    return _user(row) if row else None


async def get_user_by_email(conn: asyncpg.Connection, email: str) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE lower(email) = lower($1)", email.strip()
    )
    return _user(row) if row else None


async def update_user(
    conn: asyncpg.Connection,
    user_id: uuid.UUID,
    email: str | None,
    attributes: dict[str, Any] | None,
    replace_attributes: bool,
) -> User | None:
    """Applies the change; None when the new email belongs to another user."""
    try:
        row = await conn.fetchrow(
            "UPDATE users SET email = coalesce($2, email), attributes = CASE "
            "  WHEN $3::jsonb IS NULL THEN attributes "
            "  WHEN $4 THEN $3::jsonb "
            "  ELSE jsonb_merge_patch(attributes, $3::jsonb) END "
            f"WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id,
            email,
            attributes,
            replace_attributes,
        )
    except asyncpg.UniqueViolationError:
        return None
    return _user(row) if row else None


async def delete_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM users WHERE id = $1", user_id)


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


async def get_transition(conn: asyncpg.Connection, transition_id: int) -> Transition | None:
    row = await conn.fetchrow("SELECT * FROM user_lifecycle_history WHERE id = $1", transition_id)
    return _transition(row) if row else None


async def list_users(
    conn: asyncpg.Connection,
    where: UserFilter,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[User]:
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users "
        "WHERE ($1::text[] IS NULL OR current_lifecycle_stage = ANY($1)) "
        "  AND ($2::timestamptz IS NULL OR created_at >= $2) "
        "  AND ($3::timestamptz IS NULL OR created_at < $3) "
        "  AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid)) "
        "ORDER BY created_at, id LIMIT $6",
        list(where.stages) or None,
        where.created_after,
        where.created_before,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_user(row) for row in rows]


async def list_transitions(
    conn: asyncpg.Connection, user_id: uuid.UUID, cursor: tuple[datetime, int] | None, limit: int
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


async def user_exists(conn: asyncpg.Connection, user_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id))


@dataclass(frozen=True)
class ImportRow:
    index: int
    email: str
    stage: str | None
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ImportedUser:
    index: int
    user_id: uuid.UUID
    created: bool
    old_stage: str | None
    stage: str
    old_attributes: dict[str, Any]
    attributes: dict[str, Any]
    # When the row was written: created_at for a new user, updated_at otherwise;
    # None when an existing user was left as it was.
    changed_at: datetime | None
    # The stage change an existing user underwent.
    transition: Transition | None


_IMPORT_EXISTING = """
WITH input AS (
  SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::jsonb[])
    AS i(idx, lemail, stage, patch)
), locked AS (
  SELECT u.id, i.idx, u.current_lifecycle_stage AS old_stage, u.attributes AS old_attrs,
         coalesce(i.stage, u.current_lifecycle_stage) AS new_stage,
         jsonb_merge_patch(u.attributes, i.patch) AS new_attrs
  FROM users u JOIN input i ON lower(u.email) = i.lemail
  FOR UPDATE OF u
), updated AS (
  UPDATE users u SET current_lifecycle_stage = l.new_stage, attributes = l.new_attrs
  FROM locked l
  WHERE u.id = l.id AND (l.new_stage <> l.old_stage OR l.new_attrs <> l.old_attrs)
  RETURNING u.id, u.updated_at
), recorded AS (
  INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at, metadata)
  SELECT l.id, l.old_stage, l.new_stage, clock_timestamp(), '{"source": "import"}'::jsonb
  FROM locked l WHERE l.new_stage <> l.old_stage
  RETURNING id, user_id, transitioned_at
)
SELECT l.idx, l.id, l.old_stage, l.new_stage, l.old_attrs, l.new_attrs,
       up.updated_at, r.id AS transition_id, r.transitioned_at
FROM locked l LEFT JOIN updated up ON up.id = l.id LEFT JOIN recorded r ON r.user_id = l.id
"""

_IMPORT_NEW = """
WITH input AS (
  SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::jsonb[])
    AS i(idx, email, stage, attrs)
), inserted AS (
  INSERT INTO users (email, current_lifecycle_stage, attributes)
  SELECT email, stage, jsonb_strip_nulls(attrs) FROM input ORDER BY idx
  ON CONFLICT DO NOTHING
  RETURNING id, email, current_lifecycle_stage, attributes, created_at
), recorded AS (
  INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at, metadata)
  SELECT id, NULL, current_lifecycle_stage, created_at, '{"source": "import"}'::jsonb FROM inserted
)
SELECT i.idx, ins.id, ins.current_lifecycle_stage, ins.attributes, ins.created_at
FROM inserted ins
JOIN input i ON lower(i.email) = lower(ins.email)
"""


async def import_existing(
    conn: asyncpg.Connection, rows: Sequence[ImportRow]
) -> list[ImportedUser]:
    """Merges rows into the users they name; rows naming no user are left out."""
    records = await conn.fetch(
        _IMPORT_EXISTING,
        [r.index for r in rows],
        [r.email.lower() for r in rows],
        [r.stage for r in rows],
        [r.attributes for r in rows],
    )
    return [
        ImportedUser(
            index=rec["idx"],
            user_id=rec["id"],
            created=False,
            old_stage=rec["old_stage"],
            stage=rec["new_stage"],
            old_attributes=rec["old_attrs"],
            attributes=rec["new_attrs"],
            changed_at=rec["updated_at"],
            transition=None
            if rec["transition_id"] is None
            else Transition(
                id=rec["transition_id"],
                user_id=rec["id"],
                from_stage=rec["old_stage"],
                to_stage=rec["new_stage"],
                transitioned_at=rec["transitioned_at"],
                workflow_execution_id=None,
                metadata=IMPORT_METADATA,
            ),
        )
        for rec in records
    ]


async def import_new(
    conn: asyncpg.Connection, rows: Sequence[ImportRow], default_stage: str
) -> list[ImportedUser]:
    """Inserts rows as new users; rows whose email was taken meanwhile are left out."""
    records = await conn.fetch(
        _IMPORT_NEW,
        [r.index for r in rows],
        [r.email for r in rows],
        [r.stage or default_stage for r in rows],
        [r.attributes for r in rows],
    )
    return [
        ImportedUser(
            index=rec["idx"],
            user_id=rec["id"],
            created=True,
            old_stage=None,
            stage=rec["current_lifecycle_stage"],
            old_attributes={},
            attributes=rec["attributes"],
            changed_at=rec["created_at"],
            transition=None,
        )
        for rec in records
    ]
