"""The workflows service's retention, run by `lifecycle maintenance`: executions
that finished more than a year ago are deleted, in batches, the messages
nobody can receive nor repeat any more, and campaign cycles that ended more
than a year ago."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from services.workflows.store import campaigns, retention

RETENTION = timedelta(days=365)
RETENTION_BATCH = 1000


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    cutoff = datetime(today.year, today.month, today.day, tzinfo=UTC) - RETENTION
    deleted = 0
    while True:
        batch = await retention.delete_finished(conn, cutoff, RETENTION_BATCH)
        deleted += batch
        if batch < RETENTION_BATCH:
            break
    stale = await retention.delete_stale_messages(conn, cutoff + RETENTION - timedelta(days=1))
    cycles = await campaigns.delete_ended(conn, cutoff)
    return [
        f"deleted {deleted} executions finished before {cutoff.date()}",
        f"deleted {stale} expired messages",
        f"deleted {cycles} campaign cycles ended before {cutoff.date()}",
    ]
