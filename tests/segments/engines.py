"""Both engines of the condition language over the same users, as the services
run them: the users service's SQL (services.users.store.match_users) and the
Python evaluator on profiles that went through the users service's messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from clients.users import KnownUser
from conditions import (
    SEGMENT,
    Condition,
    Context,
    Evaluator,
    compile_sql,
    event_reads,
    parse_condition,
)
from services.users import store, store_events
from services.users.events import EventReads
from services.users.servicer import profile_message
from tests.support import ScratchDatabase, valid_until_of

# A row of user_lifecycle_history: from_stage, to_stage, transitioned_at.
Transition = tuple[str | None, str, datetime]


@dataclass(frozen=True)
class StoredUser:
    attributes: dict[str, Any]
    stage: str = "Acquisition"
    created_at: datetime | None = None
    # Their stage history; None for one transition into their stage when created.
    history: tuple[Transition, ...] | None = None
    # Their tracked events (user_events): type, when, data.
    events: tuple[tuple[str, datetime, dict[str, Any]], ...] = ()

    def transitions(self, now: datetime) -> tuple[Transition, ...]:
        if self.history is not None:
            return self.history
        return ((None, self.stage, self.created_at or now),)


@asynccontextmanager
async def users_connection(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection in the users schema, with the service's JSON codecs, inside a
    transaction that is rolled back: what a test inserts disappears with it."""
    conn = await asyncpg.connect(database.admin_url, server_settings={"search_path": "users"})
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
    # The isolation MatchUserIds runs in, so that its own transaction nests in this one.
    transaction = conn.transaction(isolation="repeatable_read")
    await transaction.start()
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


async def insert_users(
    conn: asyncpg.Connection, users: Sequence[StoredUser], now: datetime
) -> list[uuid.UUID]:
    """Writes documents as they are, nulls included (the API strips top-level nulls)."""
    ids = [uuid.uuid4() for _ in users]
    await conn.execute(
        "INSERT INTO users (id, email, current_lifecycle_stage, attributes, created_at)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]::jsonb[],"
        " $5::timestamptz[])",
        ids,
        [f"{user_id}@example.com" for user_id in ids],
        [user.stage for user in users],
        [json.dumps(user.attributes) for user in users],
        [user.created_at or now for user in users],
    )
    history = [
        (user_id, *transition)
        for user_id, user in zip(ids, users, strict=True)
        for transition in user.transitions(now)
    ]
    if history:
        await conn.execute(
            "INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at)"
            " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])",
            *map(list, zip(*history, strict=True)),
        )
    events = [
        (f"{user_id}:{index}", user_id, kind, moment, json.dumps(data))
        for user_id, user in zip(ids, users, strict=True)
        for index, (kind, moment, data) in enumerate(user.events)
    ]
    if events:
        await conn.execute(
            "INSERT INTO user_events (message_id, user_id, event_type, occurred_at, data)"
            " SELECT m, u, t, o, d::jsonb FROM unnest($1::text[], $2::uuid[], $3::text[],"
            " $4::timestamptz[], $5::text[]) AS x(m, u, t, o, d)",
            *map(list, zip(*events, strict=True)),
        )
    return ids


@dataclass(frozen=True)
class Verdicts:
    """What an engine says of each user, every moment capped at `cap` as the
    segments service caps them."""

    members: set[uuid.UUID]
    # When time alone may end each member's match.
    valid_until: dict[uuid.UUID, datetime]
    # When time alone may make each other user match.
    next_entry: dict[uuid.UUID, datetime]
    # The earliest of those: when the segments service refreshes next.
    earliest_entry: datetime


def _capped(moment: datetime | None, cap: datetime) -> datetime:
    return min(moment, cap) if moment is not None else cap


async def _sql_matches(
    conn: asyncpg.Connection, query: store.MatchQuery
) -> tuple[dict[uuid.UUID, datetime | None], datetime | None]:
    """MatchUserIds as the users service runs it: each match's valid_until, and the
    earliest entry of the others."""
    matches: dict[uuid.UUID, datetime | None] = {}
    entries = []
    async for batch in store.match_users(conn, query, timeout_ms=5000, batch_size=1000):
        matches.update(
            (uuid.UUID(user_id), valid_until_of(micros))
            for user_id, micros in zip(batch.user_ids, batch.valid_until, strict=True)
        )
        entries += [batch.next_entry] if batch.next_entry is not None else []
    return matches, min(entries, default=None)


async def sql_verdicts(
    conn: asyncpg.Connection,
    condition: Condition,
    ids: Sequence[uuid.UUID],
    as_of: datetime,
    cap: datetime,
) -> Verdicts:
    compiled = compile_sql(condition, as_of)
    query = store.MatchQuery(compiled, user_ids=tuple(ids), next_entry=True)
    matches, earliest = await _sql_matches(conn, query)
    next_entry = {}
    for user_id in ids:
        if user_id not in matches:
            # The earliest entry of one user is that user's entry.
            alone = replace(query, user_ids=(user_id,))
            next_entry[user_id] = _capped((await _sql_matches(conn, alone))[1], cap)
    return Verdicts(
        set(matches),
        {user_id: _capped(moment, cap) for user_id, moment in matches.items()},
        next_entry,
        _capped(earliest, cap),
    )


async def python_verdicts(
    conn: asyncpg.Connection,
    condition: Condition,
    ids: Sequence[uuid.UUID],
    as_of: datetime,
    cap: datetime,
) -> Verdicts:
    evaluator = Evaluator(condition)
    members: set[uuid.UUID] = set()
    valid_until: dict[uuid.UUID, datetime] = {}
    next_entry: dict[uuid.UUID, datetime] = {}
    wanted = event_reads(condition.event_leaves(), as_of)
    reads = EventReads.of(wanted.types, wanted.since)
    for stored in await store_events.profiles_with_events(conn, ids, reads):
        profile = KnownUser(profile_message(stored)).profile
        context = Context(as_of=as_of, user=profile)
        flip = _capped(evaluator.valid_until(context), cap)
        if evaluator.matches(context):
            members.add(stored.user_id)
            valid_until[stored.user_id] = flip
        else:
            next_entry[stored.user_id] = flip
    return Verdicts(members, valid_until, next_entry, min(next_entry.values(), default=cap))


def condition_of(data: dict[str, Any]) -> Condition:
    return parse_condition(data, "condition", SEGMENT)


CAP = timedelta(days=400)
