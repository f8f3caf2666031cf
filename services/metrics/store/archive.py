"""The SQL of retention and archival: partitions exported and loaded as CSV,
their rows' fingerprints, detached and dropped; the record of archived
partitions; old daily metrics removed."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, BinaryIO

import asyncpg

from runtime.migrations import quote_identifier
from services.metrics.domain import EVENTS_TABLE, METRICS_TABLE
from services.metrics.store.common import lock_rollups


@dataclass(frozen=True)
class RowStats:
    rows: int
    min_created_at: str | None
    max_created_at: str | None
    fingerprint: str


@dataclass(frozen=True)
class ArchivedPartition:
    name: str
    location: str
    rows: int


async def row_stats(conn: asyncpg.Connection, table: str, columns: list[str]) -> RowStats:
    """The fingerprint is over the archive's columns: a table restored from an
    archive written before a column was added holds that column too, empty."""
    values = ", ".join(f"t.{quote_identifier(c)}" for c in columns)
    row = await conn.fetchrow(
        "SELECT count(*) AS rows, min(created_at) AS low, max(created_at) AS high,"
        f" coalesce(bit_xor(hashtextextended(ROW({values})::text, 0)), 0)::text AS fingerprint"
        f" FROM {quote_identifier(table)} t"
    )
    assert row is not None
    low, high = row["low"], row["high"]
    return RowStats(
        row["rows"],
        low.isoformat() if low else None,
        high.isoformat() if high else None,
        row["fingerprint"],
    )


async def columns_of(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1)"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [r["attname"] for r in rows]


async def export_csv(
    conn: asyncpg.Connection,
    table: str,
    columns: list[str],
    write: Callable[[bytes], Coroutine[Any, Any, None]],
) -> None:
    """The table's rows in id order, as CSV with a header, to `write`."""
    column_list = ", ".join(quote_identifier(c) for c in columns)
    await conn.copy_from_query(
        f"SELECT {column_list} FROM {quote_identifier(table)} ORDER BY id",
        output=write,
        format="csv",
        header=True,
    )


async def load_csv(
    conn: asyncpg.Connection, table: str, columns: list[str], source: BinaryIO
) -> None:
    """CSV with a header, as export_csv writes it, into `table`."""
    await conn.copy_to_table(table, source=source, columns=columns, format="csv", header=True)


async def lock_partition(conn: asyncpg.Connection, name: str, lock_timeout: str) -> None:
    """Keeps writers out of the partition until the transaction ends."""
    await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
    await conn.execute(f"LOCK TABLE {quote_identifier(name)} IN SHARE MODE")


async def create_check_table(conn: asyncpg.Connection, name: str) -> None:
    """A temporary table shaped as the event log, gone at the end of the transaction."""
    await conn.execute(
        f"CREATE TEMPORARY TABLE {quote_identifier(name)}"
        f" (LIKE {EVENTS_TABLE.table}) ON COMMIT DROP"
    )


async def create_events_table(conn: asyncpg.Connection, name: str) -> None:
    """A new table shaped as the event log."""
    await conn.execute(f"CREATE TABLE {quote_identifier(name)} (LIKE {EVENTS_TABLE.table})")


async def wait_for_rollups(conn: asyncpg.Connection, lock_timeout: str) -> None:
    """Takes the rollups' lock for the rest of the transaction, however long
    a running rollup holds it, then bounds the next locks by `lock_timeout` again."""
    await conn.execute("SET LOCAL lock_timeout = 0")
    await lock_rollups(conn)
    await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")


async def detach_and_drop(conn: asyncpg.Connection, name: str) -> None:
    """The event partition leaves the log, and goes."""
    await conn.execute(
        f"ALTER TABLE {EVENTS_TABLE.table} DETACH PARTITION {quote_identifier(name)}"
    )
    await conn.execute(f"DROP TABLE {quote_identifier(name)}")


async def record_archive(
    conn: asyncpg.Connection,
    name: str,
    bounds: tuple[datetime, datetime],
    location: str,
    manifest_json: str,
) -> None:
    """Records where the partition of [start, end) went (again, when it was archived before)."""
    await conn.execute(
        "INSERT INTO archived_partitions"
        " (partition_name, range_start, range_end, data_location, manifest)"
        " VALUES ($1, $2, $3, $4, $5::text::jsonb)"
        " ON CONFLICT (partition_name) DO UPDATE SET"
        " data_location = excluded.data_location, manifest = excluded.manifest,"
        " archived_at = now()",
        name,
        *bounds,
        location,
        manifest_json,
    )


async def archived_partitions(conn: asyncpg.Connection) -> list[ArchivedPartition]:
    rows = await conn.fetch(
        "SELECT partition_name, data_location, (manifest->>'rows')::bigint AS rows"
        " FROM archived_partitions ORDER BY partition_name"
    )
    return [ArchivedPartition(r["partition_name"], r["data_location"], r["rows"]) for r in rows]


async def remove_erased(conn: asyncpg.Connection, table: str) -> int:
    """Deletes, from a table of restored events, the users erased since they were archived."""
    status = await conn.execute(
        f"DELETE FROM {quote_identifier(table)} t USING erased_users x WHERE t.user_id = x.user_id"
    )
    return int(status.split()[-1])


async def forget_erased_events(conn: asyncpg.Connection, first: date, end: date) -> None:
    """Deletes the erased_events of [first, end), whose events are archived."""
    await conn.execute(
        "DELETE FROM erased_events WHERE event_day >= $1 AND event_day < $2", first, end
    )


async def drop_metrics_partition(conn: asyncpg.Connection, name: str, lock_timeout: str) -> None:
    await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
    await conn.execute(f"DROP TABLE {quote_identifier(name)}")


async def delete_metrics_before(conn: asyncpg.Connection, cutoff: date) -> int:
    """Deletes the daily metrics of the days before `cutoff`; returns how many."""
    status = await conn.execute(f"DELETE FROM {METRICS_TABLE.table} WHERE metric_date < $1", cutoff)
    return int(status.split()[-1])
