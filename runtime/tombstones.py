"""Erased users, as every service that keeps data about users remembers them:
an `erased_users` table in its own schema (user_id, erased_at), so that work
still in flight for a user erased meanwhile (an outbox message, a refresh, a
late event) is refused instead of bringing the data back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from runtime.database import Executor


async def bury(conn: Executor, user_id: uuid.UUID) -> None:
    """Records the user as erased (again is harmless)."""
    await conn.execute(
        "INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id
    )


async def erased_among(conn: Executor, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT user_id FROM erased_users WHERE user_id = ANY($1::uuid[])", list(user_ids)
    )
    return {row["user_id"] for row in rows}


async def forget(conn: Executor, before: datetime) -> int:
    """Drops the tombstones of users erased before `before`; returns how many."""
    result = await conn.execute("DELETE FROM erased_users WHERE erased_at < $1", before)
    return int(result.split()[-1])
