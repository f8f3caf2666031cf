"""Archival and rollups take turns, against a real PostgreSQL, in a database of
its own (archiving moves the first day the log holds whole): a partition is
not detached while a rollup runs, and a rollup that waited while a partition
was archived refuses its days instead of recomputing them from a log that no
longer holds their events."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from services.metrics import store
from services.metrics.archive import FolderArchive
from services.metrics.handlers import ArchivedDays, rollup
from services.metrics.maintenance import archive_partition
from tests.metrics.conftest import as_metrics, create_partitions, metric_rows
from tests.metrics.test_archive import insert_events, partitions
from tests.support import ScratchDatabase

MONTH, NEXT_MONTH = date(2025, 3, 1), date(2025, 4, 1)
PARTITION = "lifecycle_events_2025_03"


async def comes_to_wait_for_the_rollups(
    observer: asyncpg.Connection, conn: asyncpg.Connection, task: asyncio.Task[object]
) -> bool:
    """Whether `conn` waits for the rollups' lock before `task` (running on it) ends."""
    while not task.done():
        if await observer.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'"
            " AND objid::bigint = $2 AND NOT granted)",
            conn.get_server_pid(),
            store.ROLLUP_LOCK,
        ):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_archival_waits_for_a_running_rollup_and_a_rollup_waiting_behind_it_refuses_its_days(
    own_database: ScratchDatabase, tmp_path: Path
) -> None:
    await create_partitions(own_database, MONTH)
    async with (
        as_metrics(own_database) as running,
        as_metrics(own_database) as archiving,
        as_metrics(own_database) as waiting,
    ):
        await insert_events(running, MONTH, 60)
        await rollup(running, MONTH, date(2025, 3, 31))
        rolled_up = await metric_rows(running)
        async with running.transaction():
            await store.lock_rollups(running)
            archival = asyncio.create_task(
                archive_partition(archiving, FolderArchive(tmp_path), PARTITION, MONTH, NEXT_MONTH)
            )
            assert await asyncio.wait_for(
                comes_to_wait_for_the_rollups(running, archiving, archival), 30
            )
            assert PARTITION in await partitions(running)
            late = asyncio.create_task(rollup(waiting, date(2025, 3, 10), date(2025, 3, 20)))
            assert await asyncio.wait_for(comes_to_wait_for_the_rollups(running, waiting, late), 30)
        # The running rollup ends: the archival, first in line, detaches the
        # partition and ends, which lets the waiting rollup in.
        manifest = await asyncio.wait_for(archival, 30)
        with pytest.raises(ArchivedDays, match="2025-04-01"):
            await asyncio.wait_for(late, 30)
        assert manifest.rows == 60
        assert PARTITION not in await partitions(running)
        assert await metric_rows(running) == rolled_up
