"""Messages: the buffered ones (kept for their time to live, for executions
that start waiting later), the ids remembered for deduplication, and the
subscriptions of the executions waiting for one."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from services.workflows.domain import NewMessage


@dataclass(frozen=True)
class Buffered:
    id: int
    name: str
    variables: dict[str, Any]


class Waiting(NamedTuple):
    """An execution that starts waiting for a message of its user: does a
    buffered one answer it?"""

    execution_id: uuid.UUID
    user_id: uuid.UUID
    name: str
    # Its correlation key; None: the user id.
    key: str | None = None


class Subscriber(NamedTuple):
    """The token of an execution waiting for a message, at its catch element."""

    execution_id: uuid.UUID
    token: int
    element_id: str


class Correlation(NamedTuple):
    """A message's user and name: what subscriptions wait on."""

    user_id: uuid.UUID
    name: str
    # The message's correlation key; None: the user id.
    key: str | None = None


# A subscription's or a message's key: its correlation key, else its user id.
KEY = "coalesce({0}.correlation_key, {0}.user_id::text)"


async def buffered_messages(
    conn: asyncpg.Connection, wanted: Sequence[Waiting], now: datetime
) -> dict[tuple[uuid.UUID, str], Buffered]:
    """For each waiting execution, by (execution, message name): the oldest live
    buffered message it has not had yet."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (w.execution_id, w.name) w.execution_id, m.id, m.name, m.variables"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $5::text[])"
        " AS w(execution_id, user_id, name, correlation_key)"
        " JOIN messages m ON m.user_id = w.user_id AND m.name = w.name AND m.expires_at > $4"
        f"  AND {KEY.format('m')} = {KEY.format('w')}"
        "  AND NOT (w.execution_id = ANY(m.delivered_to))"
        " ORDER BY w.execution_id, w.name, m.id",
        [w.execution_id for w in wanted],
        [w.user_id for w in wanted],
        [w.name for w in wanted],
        now,
        [w.key for w in wanted],
    )
    return {
        (row["execution_id"], row["name"]): Buffered(row["id"], row["name"], row["variables"])
        for row in rows
    }


_INSERT_MESSAGES = (
    "INSERT INTO messages"
    " (name, user_id, message_id, variables, published_at, expires_at, correlation_key)"
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
        " $4::timestamptz, '-infinity'::timestamptz, NULL"
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
        " $5::timestamptz, $5::timestamptz + r.ttl, r.correlation_key"
        " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[], $6::interval[],"
        " $7::text[]) AS r(name, user_id, message_id, variables, ttl, correlation_key)"
        " ON CONFLICT (message_id) DO UPDATE SET variables = excluded.variables,"
        " expires_at = excluded.expires_at, correlation_key = excluded.correlation_key",
        *_message_keys(messages),
        [m.variables for m in messages],
        now,
        [m.ttl for m in messages],
        [m.correlation_key for m in messages],
    )


async def subscribers(
    conn: asyncpg.Connection, wanted: Sequence[Correlation], *, every: bool = False
) -> dict[uuid.UUID, list[Subscriber]]:
    """Who waits for each (user, message name), by user: the oldest token of
    each execution, with its element (`every`: each waiting token, in order)."""
    distinct = "" if every else "DISTINCT ON (s.execution_id) "
    rows = await conn.fetch(
        f"SELECT {distinct}s.user_id, s.execution_id, s.token, s.element_id"
        " FROM message_subscriptions s"
        " JOIN unnest($1::uuid[], $2::text[], $3::text[]) AS w(user_id, name, correlation_key)"
        " ON s.user_id = w.user_id AND s.message_name = w.name"
        f" AND {KEY.format('s')} = {KEY.format('w')}"
        " ORDER BY s.execution_id, s.token",
        [w.user_id for w in wanted],
        [w.name for w in wanted],
        [w.key for w in wanted],
    )
    found: dict[uuid.UUID, list[Subscriber]] = defaultdict(list)
    for row in rows:
        found[row["user_id"]].append(
            Subscriber(row["execution_id"], row["token"], row["element_id"])
        )
    return found
