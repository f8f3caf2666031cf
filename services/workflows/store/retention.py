"""What `lifecycle maintenance` deletes: old finished executions, stale messages."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def delete_finished(conn: asyncpg.Connection, before: datetime, batch: int) -> int:
    """Up to `batch` executions that ended before `before`; how many were deleted."""
    result = await conn.execute(
        "DELETE FROM workflow_executions WHERE id IN (SELECT id FROM workflow_executions"
        " WHERE completed_at < $1 AND status IN ('completed', 'failed', 'cancelled')"
        " ORDER BY completed_at LIMIT $2)",
        before,
        batch,
    )
    return int(result.split()[-1])


async def delete_stale_messages(conn: asyncpg.Connection, before: datetime) -> int:
    """Messages that expired, and were published, before `before`."""
    result = await conn.execute(
        "DELETE FROM messages WHERE expires_at < $1 AND published_at < $1", before
    )
    return int(result.split()[-1])
