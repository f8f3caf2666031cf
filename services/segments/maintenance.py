"""The segments service's retention, run by `lifecycle maintenance`: the
tombstones of erased users are forgotten after TOMBSTONE_DAYS."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime import tombstones

# Erased users' ids are kept this long, for messages about them still in flight.
TOMBSTONE_DAYS = 90


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    forgotten = await tombstones.forget(conn, midnight - timedelta(days=TOMBSTONE_DAYS))
    return [f"forgot {forgotten} erased users older than {TOMBSTONE_DAYS} days"]
