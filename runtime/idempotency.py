"""request_id idempotency (AIP-155).

Inside the transaction of a create, `claim` either reserves the request id or
returns the response stored by the call that used it first. A concurrent
duplicate waits on the unique key until the first call commits or rolls back.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from google.protobuf.message import Message

from runtime.errors import Aborted, InvalidArgument, Violations
from runtime.parsing import parse_uuid


@dataclass(frozen=True)
class RequestKey:
    """A request_id with the fingerprint of the request it came with."""

    method: str
    request_id: uuid.UUID
    fingerprint: bytes


def request_key(request: Message, method: str, violations: Violations) -> RequestKey | None:
    """The key of a request carrying a `request_id` field; None when it is empty."""
    request_id = parse_uuid(request.request_id, "request_id", violations, required=False)  # type: ignore[attr-defined]
    return None if request_id is None else RequestKey(method, request_id, fingerprint(request))


def fingerprint(request: Message) -> bytes:
    """The request without its request_id, hashed; a reused id must come with the same request."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


async def claim(conn: asyncpg.Connection, key: RequestKey) -> bytes | None:
    """None when the id is new (now reserved); the first call's response otherwise."""
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (method, request_id, request_hash) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING true",
        key.method,
        key.request_id,
        key.fingerprint,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT request_hash, response FROM idempotency_keys WHERE method = $1 AND request_id = $2",
        key.method,
        key.request_id,
    )
    if row is None:
        raise Aborted("the first call with this request_id expired meanwhile; retry")
    if row["request_hash"] != key.fingerprint:
        raise InvalidArgument.field("request_id", "was already used for a different request")
    response: bytes = row["response"]
    return response


async def store(conn: asyncpg.Connection, key: RequestKey, response: bytes) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET response = $3 WHERE method = $1 AND request_id = $2",
        key.method,
        key.request_id,
        response,
    )


async def record(conn: asyncpg.Connection, answered: Sequence[tuple[RequestKey, bytes]]) -> None:
    """Stores the keys of calls answered together, with their responses. A key
    taken meanwhile fails the statement (asyncpg.UniqueViolationError)."""
    if answered:
        await conn.execute(
            "INSERT INTO idempotency_keys (method, request_id, request_hash, response)"
            " SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[], $4::bytea[])",
            [key.method for key, _ in answered],
            [key.request_id for key, _ in answered],
            [key.fingerprint for key, _ in answered],
            [response for _, response in answered],
        )


async def expire(conn: asyncpg.Connection, older_than_days: int) -> int:
    result = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)",
        older_than_days,
    )
    return int(result.split()[-1])
