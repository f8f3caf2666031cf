"""Both engines of the condition language over the same users, as the services
run them: the users service's SQL (services.users.store.match_users) and the
Python evaluator on profiles that went through the users service's messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from runtime.conditions import (
    SEGMENT,
    Condition,
    Context,
    Evaluator,
    compile_sql,
    parse_condition,
)
from services.segments.users_client import profile_of
from services.users import store
from services.users.servicer import profile_message
from tests.support import ScratchDatabase


@dataclass(frozen=True)
class StoredUser:
    attributes: dict[str, Any]
    stage: str = "Acquisition"
    created_at: datetime | None = None
    # When the user entered their stage (their one recorded transition).
    entered_at: datetime | None = None


@asynccontextmanager
async def users_connection(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection in the users schema, with the service's JSON codecs, inside a
    transaction that is rolled back: what a test inserts disappears with it."""
    conn = await asyncpg.connect(database.admin_url, server_settings={"search_path": "users"})
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
    # The isolation MatchUsers runs in, so that its own transaction nests in this one.
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
    await conn.execute(
        "INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])",
        ids,
        [None] * len(users),
        [user.stage for user in users],
        [user.entered_at or user.created_at or now for user in users],
    )
    return ids


@dataclass(frozen=True)
class Verdicts:
    members: set[uuid.UUID]
    # valid_until of each member, capped at `cap` as the segments service does.
    valid_until: dict[uuid.UUID, datetime]


def _capped(moment: datetime | None, cap: datetime) -> datetime:
    return min(moment, cap) if moment is not None else cap


async def sql_verdicts(
    conn: asyncpg.Connection,
    condition: Condition,
    ids: Sequence[uuid.UUID],
    as_of: datetime,
    cap: datetime,
) -> Verdicts:
    query = store.MatchQuery(compile_sql(condition, as_of), user_ids=tuple(ids))
    members: set[uuid.UUID] = set()
    valid_until: dict[uuid.UUID, datetime] = {}
    async for batch in store.match_users(conn, query, timeout_ms=5000, batch_size=1000):
        for row in batch:
            user_id = uuid.UUID(row["id"])
            members.add(user_id)
            valid_until[user_id] = _capped(row["valid_until"], cap)
    return Verdicts(members, valid_until)


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
    for stored in await store.get_profiles(conn, ids):
        profile = profile_of(profile_message(stored))
        context = Context(as_of=as_of, user=profile)
        if evaluator.matches(context):
            members.add(stored.user_id)
            valid_until[stored.user_id] = _capped(evaluator.valid_until(context), cap)
    return Verdicts(members, valid_until)


def condition_of(data: dict[str, Any]) -> Condition:
    return parse_condition(data, "condition", SEGMENT)


CAP = timedelta(days=400)
