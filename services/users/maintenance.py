"""The users service's retention, run by `lifecycle maintenance`: people's
tracked events (user_events) are deleted once older than the retention
(LIFECYCLE_USERS_EVENT_RETENTION_DAYS), in batches so locks stay short."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg

from services.users.settings import load_settings
from services.users.store_events import forget_events

BATCH = 10_000


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    retention = load_settings().event_retention
    before = datetime(today.year, today.month, today.day, tzinfo=UTC) - retention
    total = 0
    while deleted := await forget_events(conn, before, BATCH):
        total += deleted
    return [f"deleted {total} tracked events older than {retention.days} days"]
