"""The segments service's SQL. Every function runs on the connection it is given,
inside the caller's transaction where one is open. Set-based throughout:
arrays in, one statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from runtime import tombstones
from runtime.database import Executor
from services.segments.domain import (
    CachedMembership,
    Membership,
    Segment,
    SegmentFields,
    SegmentSize,
    utc_day,
)

# The first key of the advisory locks that serialise the membership writes of a
# segment (the second is the hash of its id): "SEGM" in ASCII.
LOCK_CLASS = 0x5345474D
# And of those that hold a segment's definition while it is changed or read for
# an answer that will be cached: "SEGD".
DEFINITION_LOCK_CLASS = 0x53454744

_SEGMENT = """
SELECT s.id, s.name, coalesce(s.description, '') AS description, s.conditions,
       coalesce(s.lifecycle_stages, '{}') AS lifecycle_stages, s.created_at, s.updated_at,
       coalesce(r.member_count, 0) AS member_count, r.evaluated_at
FROM user_segments s LEFT JOIN segment_refreshes r ON r.segment_id = s.id
"""


# A day's size is its last count.
_LAST_WINS = (
    "ON CONFLICT (segment_id, day) DO UPDATE"
    " SET members = excluded.members, recorded_at = excluded.recorded_at"
)


def _segment(row: asyncpg.Record) -> Segment:
    return Segment(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        conditions=row["conditions"],
        stages=tuple(row["lifecycle_stages"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        member_count=row["member_count"],
        evaluated_at=row["evaluated_at"],
    )


# Segments


async def insert_segment(conn: asyncpg.Connection, fields: SegmentFields, now: datetime) -> Segment:
    segment_id = await conn.fetchval(
        "INSERT INTO user_segments (name, description, conditions, lifecycle_stages)"
        " VALUES ($1, $2, $3, $4) RETURNING id",
        fields.name,
        fields.description,
        fields.conditions,
        list(fields.stages or ()),
    )
    # Its size starts at none on the day it is created.
    await conn.execute(
        "WITH refresh AS (INSERT INTO segment_refreshes (segment_id, changed_at, next_refresh_at)"
        " VALUES ($1, $2, $2))"
        " INSERT INTO segment_sizes (segment_id, day, members, recorded_at) VALUES ($1, $3, 0, $2)",
        segment_id,
        now,
        utc_day(now),
    )
    segment = await get_segment(conn, segment_id)
    assert segment is not None
    return segment


async def get_segment(conn: Executor, segment_id: uuid.UUID) -> Segment | None:
    row = await conn.fetchrow(f"{_SEGMENT} WHERE s.id = $1", segment_id)
    return _segment(row) if row else None


async def lock_segments(
    conn: asyncpg.Connection, segment_ids: Iterable[uuid.UUID], *, exclusive: bool = False
) -> set[uuid.UUID]:
    """Row-locks the segments (shared: none can be deleted meanwhile); returns those that exist."""
    mode = "UPDATE" if exclusive else "SHARE"
    rows = await conn.fetch(
        f"SELECT id FROM user_segments WHERE id = ANY($1::uuid[]) ORDER BY id FOR {mode}",
        sorted(segment_ids),
    )
    return {row["id"] for row in rows}


async def list_segments(
    conn: Executor,
    stages: Sequence[str],
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Segment]:
    rows = await conn.fetch(
        f"{_SEGMENT} WHERE ($1::varchar[] IS NULL OR s.lifecycle_stages && $1::varchar[])"
        " AND ($2::timestamptz IS NULL OR (s.created_at, s.id) > ($2, $3::uuid))"
        " ORDER BY s.created_at, s.id LIMIT $4",
        list(stages) or None,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_segment(row) for row in rows]


async def update_segment(
    conn: asyncpg.Connection, segment_id: uuid.UUID, fields: SegmentFields
) -> Segment | None:
    updated = await conn.fetchval(
        "UPDATE user_segments SET name = coalesce($2, name),"
        " description = coalesce($3, description), conditions = coalesce($4, conditions),"
        " lifecycle_stages = coalesce($5, lifecycle_stages) WHERE id = $1 RETURNING id",
        segment_id,
        fields.name,
        fields.description,
        fields.conditions,
        list(fields.stages) if fields.stages is not None else None,
    )
    return await get_segment(conn, segment_id) if updated else None


async def delete_segment(conn: asyncpg.Connection, segment_id: uuid.UUID) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM user_segments WHERE id = $1 RETURNING true", segment_id
    )
    return bool(deleted)


async def segment_versions(conn: Executor) -> dict[uuid.UUID, datetime]:
    """Every segment and when its definition last changed."""
    rows = await conn.fetch("SELECT id, updated_at FROM user_segments")
    return {row["id"]: row["updated_at"] for row in rows}


async def segments_by_id(conn: Executor, segment_ids: Sequence[uuid.UUID]) -> list[Segment]:
    rows = await conn.fetch(f"{_SEGMENT} WHERE s.id = ANY($1::uuid[])", list(segment_ids))
    return [_segment(row) for row in rows]


async def referencing(conn: Executor, segment_id: uuid.UUID) -> list[uuid.UUID]:
    """Segments whose condition names this one in an in_segment leaf."""
    rows = await conn.fetch(
        "SELECT id FROM user_segments WHERE id <> $1 AND jsonb_path_exists(conditions,"
        " '$.**.in_segment ? (@ == $id)', jsonb_build_object('id', $1::text), true)",
        segment_id,
    )
    return [row["id"] for row in rows]


async def mark_changed(conn: Executor, segment_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Their definitions changed: memberships evaluated before `now` are stale, and
    the scheduler refreshes them at once. So are those of the last full refresh,
    whatever `now`: it may have read the old definition after `now` was taken."""
    await conn.execute(
        "UPDATE segment_refreshes"
        " SET changed_at = greatest($2, evaluated_at + interval '1 microsecond'),"
        " next_refresh_at = $2 WHERE segment_id = ANY($1::uuid[])",
        list(segment_ids),
        now,
    )


async def changed_at(conn: Executor, segment_id: uuid.UUID) -> datetime | None:
    """When the segment's definition last changed; None if the segment is gone."""
    moment: datetime | None = await conn.fetchval(
        "SELECT changed_at FROM segment_refreshes WHERE segment_id = $1", segment_id
    )
    return moment


async def finish_refresh(
    conn: Executor,
    segment_id: uuid.UUID,
    evaluated_at: datetime,
    next_refresh_at: datetime,
    changed_at: datetime,
) -> int:
    """Records a full refresh of the definition as it was at `changed_at`; returns
    the member count. If the definition changed meanwhile, the refresh confirmed
    nothing: the segment stays due and its memberships stale, those it wrote
    (evaluated at `evaluated_at`, under the old definition) included, however
    early the change's own moment was taken. Either way the count is the day's
    size: the members the table holds now."""
    count = await conn.fetchval(
        "WITH refreshed AS (UPDATE segment_refreshes SET"
        " evaluated_at = CASE WHEN changed_at = $4 THEN $2 ELSE evaluated_at END,"
        " next_refresh_at = CASE WHEN changed_at = $4 THEN $3 ELSE next_refresh_at END,"
        " changed_at = CASE WHEN changed_at = $4 THEN changed_at"
        "   ELSE greatest(changed_at, $2 + interval '1 microsecond') END,"
        " member_count = (SELECT count(*) FROM user_segment_memberships WHERE segment_id = $1)"
        " WHERE segment_id = $1 RETURNING segment_id, member_count),"
        " sized AS (INSERT INTO segment_sizes (segment_id, day, members, recorded_at)"
        f"   SELECT segment_id, $5, member_count, $2 FROM refreshed {_LAST_WINS})"
        " SELECT member_count FROM refreshed",
        segment_id,
        evaluated_at,
        next_refresh_at,
        changed_at,
        utc_day(evaluated_at),
    )
    return int(count or 0)


# Sizes


async def add_to_sizes(conn: Executor, changes: Mapping[uuid.UUID, int], at: datetime) -> None:
    """Adds each segment's change of members to its size on `at`'s day, which
    starts from its last size before (none before any). Inside the transaction
    of the change, under the segments' write locks: writers do not interleave."""
    await conn.execute(
        "INSERT INTO segment_sizes (segment_id, day, members, recorded_at)"
        " SELECT x.s, $3, x.d + coalesce((SELECT z.members FROM segment_sizes z"
        "   WHERE z.segment_id = x.s AND z.day <= $3 ORDER BY z.day DESC LIMIT 1), 0), $4"
        f" FROM unnest($1::uuid[], $2::bigint[]) AS x(s, d) {_LAST_WINS}",
        list(changes),
        list(changes.values()),
        utc_day(at),
        at,
    )


async def list_sizes(
    conn: Executor, segment_id: uuid.UUID, first: date, last: date
) -> list[SegmentSize]:
    """The segment's size on each day from `first` to `last`: the day's row, else
    the last before it; days before its first row have none."""
    rows = await conn.fetch(
        "SELECT d::date AS day, z.members, z.recorded_at"
        " FROM generate_series($2::date, $3::date, interval '1 day') AS d"
        " CROSS JOIN LATERAL (SELECT members, recorded_at FROM segment_sizes"
        "   WHERE segment_id = $1 AND day <= d::date ORDER BY day DESC LIMIT 1) AS z"
        " ORDER BY d",
        segment_id,
        first,
        last,
    )
    return [SegmentSize(row["day"], row["members"], row["recorded_at"]) for row in rows]


async def forget_sizes(conn: Executor, before: date) -> int:
    """Deletes the sizes of days before `before` but each segment's last of them,
    which is its size until its next row (and what later changes add to)."""
    result = await conn.execute(
        "DELETE FROM segment_sizes z WHERE z.day < (SELECT max(p.day) FROM segment_sizes p"
        " WHERE p.segment_id = z.segment_id AND p.day < $1)",
        before,
    )
    return int(result.split()[-1])


async def due_segments(conn: Executor, now: datetime, limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT segment_id FROM segment_refreshes WHERE next_refresh_at <= $1"
        " ORDER BY next_refresh_at LIMIT $2",
        now,
        limit,
    )
    return [row["segment_id"] for row in rows]


# Locks


async def lock_for_refresh(conn: asyncpg.Connection, segment_id: uuid.UUID, *, wait: bool) -> bool:
    """A session lock held across a refresh's transactions; False if busy and not waiting."""
    if wait:
        await conn.execute(
            "SELECT pg_advisory_lock($1, hashtext($2::uuid::text))", LOCK_CLASS, segment_id
        )
        return True
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2::uuid::text))", LOCK_CLASS, segment_id
        )
    )


async def unlock_after_refresh(conn: asyncpg.Connection, segment_id: uuid.UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock($1, hashtext($2::uuid::text))", LOCK_CLASS, segment_id
    )


async def lock_for_writes(
    conn: asyncpg.Connection, segment_ids: Iterable[uuid.UUID], *, wait: bool = True
) -> bool:
    """Transaction locks on the segments' membership writes, in one order so that
    two writers never deadlock; waits for a refresh in progress to finish."""
    ordered = sorted(segment_ids)
    if wait:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(s::text)) FROM unnest($2::uuid[]) s",
            LOCK_CLASS,
            ordered,
        )
        return True
    return bool(
        await conn.fetchval(
            "SELECT bool_and(pg_try_advisory_xact_lock($1, hashtext(s::text)))"
            " FROM unnest($2::uuid[]) s",
            LOCK_CLASS,
            ordered,
        )
    )


async def lock_definitions(
    conn: asyncpg.Connection, segment_ids: Iterable[uuid.UUID], *, exclusive: bool = False
) -> None:
    """Transaction locks on the segments' definitions: a change holds its own
    alone, an answer that will be cached shares those it reads. In memory, unlike
    row locks, which would write the segment's row on every cache miss."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(
        f"SELECT {function}($1, hashtext(s::text)) FROM unnest($2::uuid[]) s",
        DEFINITION_LOCK_CLASS,
        sorted(segment_ids),
    )


# Memberships


# When a membership was last found true: its own evaluation, or the segment's last
# full refresh, which deletes every member it does not find, so that the rows it
# leaves are confirmed without being rewritten.
_CONFIRMED_AT = "greatest(m.evaluated_at, r.evaluated_at)"
_MEMBERSHIPS = "user_segment_memberships m JOIN segment_refreshes r ON r.segment_id = m.segment_id"


async def get_membership(
    conn: Executor, user_id: uuid.UUID, segment_id: uuid.UUID
) -> CachedMembership | None:
    row = await conn.fetchrow(
        f"SELECT {_CONFIRMED_AT} AS evaluated_at, m.valid_until,"
        f" {_CONFIRMED_AT} < r.changed_at AS stale FROM {_MEMBERSHIPS}"
        " WHERE m.user_id = $1 AND m.segment_id = $2",
        user_id,
        segment_id,
    )
    if row is None:
        return None
    membership = Membership(user_id, segment_id, row["evaluated_at"], row["valid_until"])
    return CachedMembership(membership, row["stale"])


async def upsert_members(
    conn: asyncpg.Connection,
    pairs: Sequence[tuple[uuid.UUID, uuid.UUID]],
    valid_until: Sequence[datetime],
    evaluated_at: datetime,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Writes (user, segment) memberships, skipping erased users; returns the new ones."""
    rows = await conn.fetch(
        "INSERT INTO user_segment_memberships (user_id, segment_id, evaluated_at, valid_until)"
        " SELECT x.u, x.s, $4, x.v FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])"
        "   AS x(u, s, v)"
        " WHERE NOT EXISTS (SELECT 1 FROM erased_users e WHERE e.user_id = x.u)"
        " ON CONFLICT (user_id, segment_id) DO UPDATE"
        "   SET evaluated_at = excluded.evaluated_at, valid_until = excluded.valid_until"
        " RETURNING user_id, segment_id, xmax = 0 AS inserted",
        [user for user, _ in pairs],
        [segment for _, segment in pairs],
        list(valid_until),
        evaluated_at,
    )
    return [(row["user_id"], row["segment_id"]) for row in rows if row["inserted"]]


async def delete_members(
    conn: asyncpg.Connection, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Removes (user, segment) memberships; returns those that existed."""
    rows = await conn.fetch(
        "DELETE FROM user_segment_memberships m USING unnest($1::uuid[], $2::uuid[]) AS x(u, s)"
        " WHERE m.user_id = x.u AND m.segment_id = x.s RETURNING m.user_id, m.segment_id",
        [user for user, _ in pairs],
        [segment for _, segment in pairs],
    )
    return [(row["user_id"], row["segment_id"]) for row in rows]


async def list_members(
    conn: Executor, segment_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[Membership]:
    rows = await conn.fetch(
        f"SELECT m.user_id, {_CONFIRMED_AT} AS evaluated_at, m.valid_until FROM {_MEMBERSHIPS}"
        " WHERE m.segment_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2)"
        " ORDER BY m.user_id LIMIT $3",
        segment_id,
        after,
        limit,
    )
    return [
        Membership(row["user_id"], segment_id, row["evaluated_at"], row["valid_until"])
        for row in rows
    ]


async def user_memberships(conn: Executor, user_id: uuid.UUID) -> list[Membership]:
    rows = await conn.fetch(
        f"SELECT m.segment_id, {_CONFIRMED_AT} AS evaluated_at, m.valid_until"
        f" FROM {_MEMBERSHIPS} WHERE m.user_id = $1 ORDER BY m.segment_id",
        user_id,
    )
    return [
        Membership(user_id, row["segment_id"], row["evaluated_at"], row["valid_until"])
        for row in rows
    ]


async def expired_memberships(
    conn: Executor, now: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    rows = await conn.fetch(
        "SELECT user_id, segment_id FROM user_segment_memberships"
        " WHERE valid_until <= $1 ORDER BY valid_until LIMIT $2",
        now,
        limit,
    )
    return [(row["user_id"], row["segment_id"]) for row in rows]


async def erase_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Keeps the user as a tombstone and removes their memberships; returns the
    segments they were in."""
    await tombstones.bury(conn, user_id)
    rows = await conn.fetch(
        "DELETE FROM user_segment_memberships WHERE user_id = $1 RETURNING segment_id", user_id
    )
    return [row["segment_id"] for row in rows]


def _range(params: list[Any], after: str | None, through: str | None) -> str:
    """The conditions of a range of users (either end open when None), its bounds
    appended to `params`: explicit, so that the (segment_id, user_id) index serves."""
    bounds = ""
    for operator, bound in ((">", after), ("<=", through)):
        if bound is not None:
            params.append(bound)
            bounds += f" AND user_id {operator} ${len(params)}::uuid"
    return bounds


def cached_members_statement(
    segment_id: uuid.UUID, after: str | None, through: str | None, limit: int
) -> tuple[str, list[Any]]:
    """The statement of `cached_members` and its parameters."""
    params: list[Any] = [segment_id, limit]
    return (
        # Not named user_id: ORDER BY would sort the text, not walk the index.
        "SELECT user_id::text AS id,"
        " (extract(epoch FROM valid_until) * 1000000)::bigint AS valid_until"
        f" FROM user_segment_memberships WHERE segment_id = $1{_range(params, after, through)}"
        " ORDER BY user_id LIMIT $2"
    ), params


async def cached_members(
    conn: asyncpg.Connection,
    segment_id: uuid.UUID,
    after: str | None,
    through: str | None,
    limit: int,
) -> list[tuple[str, int | None]]:
    """The first `limit` cached members after `after` up to `through`, in user
    order: their ids as text, and valid_until in microseconds since the Unix
    epoch (None if unbounded)."""
    sql, params = cached_members_statement(segment_id, after, through, limit)
    rows = await conn.fetch(sql, *params)
    return [(row["id"], row["valid_until"]) for row in rows]


async def delete_range_members(
    conn: asyncpg.Connection,
    segment_id: uuid.UUID,
    user_ids: Sequence[str],
    after: str | None,
    through: str | None,
) -> list[uuid.UUID]:
    """Removes these members of the range; returns those that were."""
    params: list[Any] = [segment_id, user_ids]
    rows = await conn.fetch(
        "DELETE FROM user_segment_memberships WHERE segment_id = $1"
        f" AND user_id = ANY($2::uuid[]){_range(params, after, through)} RETURNING user_id",
        *params,
    )
    return [row["user_id"] for row in rows]
