"""The advisory lock per user (this key and a hash of the user id), taken before
the tombstones are read or any row is locked, several users in key order.

Starts and steps take it shared. A publish takes it alone, so a step that
subscribes and a publish that would buffer see each other's commit; an erase
takes it alone, so it waits for the work in flight to commit, and the work
after it sees the tombstone. A transaction holding it alone may take it shared
again (a publish's step): PostgreSQL grants a transaction what it holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg

USER_LOCK = 0x6C77_0075
SHARED, ALONE = "pg_advisory_xact_lock_shared", "pg_advisory_xact_lock"


def lock_users_sql(users: str, lock: str) -> str:
    """Locks of the users the query `users` gives, in key order: two transactions
    never wait on each other across an erase or a publish queued between them."""
    return (
        f"SELECT count({lock}({USER_LOCK}, k)) FROM"
        f" (SELECT DISTINCT hashtext(u::text) AS k FROM ({users}) AS x(u) ORDER BY k) s"
    )


async def lock_users(conn: asyncpg.Connection, user_ids: Iterable[uuid.UUID]) -> None:
    """A start's or a step's: shared."""
    await conn.execute(lock_users_sql("SELECT unnest($1::uuid[])", SHARED), list(set(user_ids)))


async def lock_users_alone(conn: asyncpg.Connection, user_ids: Iterable[uuid.UUID]) -> None:
    """A publish's or an erase's: exclusive."""
    await conn.execute(lock_users_sql("SELECT unnest($1::uuid[])", ALONE), list(set(user_ids)))
