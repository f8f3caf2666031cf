"""The SQL of people's tracked events (`user_events`, docs/conditions.md, "What
people did"). Set-based: a batch is one statement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import asyncpg

from runtime.database import Executor
from services.users.domain import Profile
from services.users.events import EventReads, RecordedEvent, StoredEvent
from services.users.store import get_profiles


async def record_events(
    conn: asyncpg.Connection, events: Sequence[RecordedEvent], now: datetime, oldest: datetime
) -> list[tuple[uuid.UUID, str]]:
    """Stores the new events of existing users that happened since `oldest`, each
    at most at `now` (a person's events are never in the future); the (user,
    type) of each one stored. A message id seen before stores nothing."""
    rows = await conn.fetch(
        "INSERT INTO user_events (message_id, user_id, event_type, occurred_at, data)"
        " SELECT x.message_id, x.user_id, x.event_type, least(x.occurred_at, $6), x.data::jsonb"
        " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[])"
        " AS x(message_id, user_id, event_type, occurred_at, data)"
        " WHERE x.occurred_at >= $7 AND EXISTS (SELECT 1 FROM users u WHERE u.id = x.user_id)"
        " ON CONFLICT (message_id) DO NOTHING RETURNING user_id, event_type",
        [event.message_id for event in events],
        [event.user_id for event in events],
        [event.event_type for event in events],
        [event.occurred_at for event in events],
        [event.data_json for event in events],
        now,
        oldest,
    )
    return [(row["user_id"], row["event_type"]) for row in rows]


async def events_of(
    conn: Executor, user_ids: Sequence[uuid.UUID], reads: EventReads
) -> dict[uuid.UUID, list[StoredEvent]]:
    """The users' events that `reads` asks for, oldest first."""
    rows = await conn.fetch(
        "SELECT e.user_id, e.event_type, e.occurred_at, e.data::text AS data FROM user_events e"
        " WHERE e.user_id = ANY($1::uuid[])"
        " AND (e.event_type = ANY($2::text[])"
        " OR EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(e.event_type, p)))"
        " AND ($4::timestamptz IS NULL OR e.occurred_at >= $4)"
        " ORDER BY e.user_id, e.occurred_at, e.message_id",
        list(user_ids),
        list(reads.exact),
        list(reads.prefixes),
        reads.since,
    )
    found: dict[uuid.UUID, list[StoredEvent]] = {}
    for row in rows:
        found.setdefault(row["user_id"], []).append(
            StoredEvent(row["event_type"], row["occurred_at"], row["data"])
        )
    return found


async def profiles_with_events(
    conn: Executor, user_ids: Sequence[uuid.UUID], reads: EventReads
) -> list[Profile]:
    """The users' profiles, each with the events `reads` asks for."""
    profiles = await get_profiles(conn, user_ids)
    if reads.empty:
        return profiles
    found = await events_of(conn, user_ids, reads)
    return [replace(p, events=tuple(found.get(p.user_id, ()))) for p in profiles]


async def forget_events(conn: Executor, before: datetime, batch: int) -> int:
    """Deletes up to `batch` events that happened before `before`; how many."""
    deleted: int = await conn.fetchval(
        "WITH gone AS (DELETE FROM user_events WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM user_events WHERE occurred_at < $1 LIMIT $2)) RETURNING 1)"
        " SELECT count(*) FROM gone",
        before,
        batch,
    )
    return deleted
