"""The triggers service's retention, run by `lifecycle maintenance`: monthly
partitions of trigger_executions whose every row is older than 90 days are
dropped whole (a younger row keeps its partition); events past their
retention (LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS), tombstones and spent
re-entry limits are deleted."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from runtime import tombstones
from services.triggers import store
from services.triggers.settings import load_settings

EXECUTION_RETENTION = timedelta(days=90)
# Erased users' ids are kept this long, for events about them still in flight.
TOMBSTONE_RETENTION = timedelta(days=90)
EVENTS_PER_DELETE = 5000
DROP_LOCK_TIMEOUT_MS = 2000


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    cutoff = (midnight - EXECUTION_RETENTION).date()
    dropped, busy = await _drop_partitions(conn, cutoff)
    retention = load_settings().event_retention
    events = await _delete_events(conn, midnight - retention)
    entries = await store.forget_entries(conn, midnight)
    forgotten = await tombstones.forget(conn, midnight - TOMBSTONE_RETENTION)
    return [
        f"dropped {len(dropped)} trigger_executions partitions ending by {cutoff}"
        + (f": {', '.join(dropped)}" if dropped else ""),
        f"deleted {events} events received before {(midnight - retention).date()}",
        f"forgot {entries} re-entry limits that expired and {forgotten} old tombstones",
        *(f"kept {name} for the next run: its table was busy" for name in busy),
    ]


async def _drop_partitions(conn: asyncpg.Connection, cutoff: date) -> tuple[list[str], list[str]]:
    """The partitions ending by `cutoff` dropped, and those left because their table was busy."""
    dropped, busy = [], []
    for name, end in sorted((await store.execution_partitions(conn)).items()):
        if end <= cutoff:
            try:
                await store.drop_partition(conn, name, DROP_LOCK_TIMEOUT_MS)
                dropped.append(name)
            except asyncpg.LockNotAvailableError:
                busy.append(name)
    return dropped, busy


async def _delete_events(conn: asyncpg.Connection, cutoff: datetime) -> int:
    """Deletes the events received before `cutoff`, a batch at a time; returns how many."""
    events = 0
    while True:
        deleted = await store.delete_events_before(conn, cutoff, EVENTS_PER_DELETE)
        events += deleted
        if deleted < EVENTS_PER_DELETE:
            return events
