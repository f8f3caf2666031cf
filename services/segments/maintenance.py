"""The segments service's retention, run by `lifecycle maintenance`: the
tombstones of erased users are forgotten after TOMBSTONE_DAYS, and the daily
sizes of segments after LIFECYCLE_SEGMENTS_SIZE_RETENTION_DAYS."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime import tombstones
from services.segments.settings import load_settings
from services.segments.store import forget_sizes

# Erased users' ids are kept this long, for messages about them still in flight.
TOMBSTONE_DAYS = 90


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    forgotten = await tombstones.forget(conn, midnight - timedelta(days=TOMBSTONE_DAYS))
    retention = load_settings().size_retention
    sizes = await forget_sizes(conn, today - retention)
    return [
        f"forgot {forgotten} erased users older than {TOMBSTONE_DAYS} days",
        f"forgot {sizes} daily segment sizes older than {retention.days} days"
        " (each segment's last one kept, its size since)",
    ]
