"""The metrics service's retention, run by `lifecycle maintenance` (and the
`lifecycle archive` command): lifecycle_events partitions older than 2 years
go to cold storage (archive.py), metrics_daily rows older than 3 years are
removed.

A partition is archived in one transaction that keeps writers out of it
(SHARE lock): export as gzip-compressed CSV, manifest (rows, time range,
SHA-256 of the file, an order-independent fingerprint of the rows), upload,
read back and load into a temporary table (one pass over the file, which also
takes its SHA-256), compare count, fingerprint and checksum, and only then
take the rollups' lock and detach and drop the partition. Any failure rolls the
transaction back: the partition stays attached with every row, and a later
run starts over (files are overwritten, never appended to).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tempfile
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import asyncpg

from runtime.errors import OperationFailed
from runtime.partitions import PartitionedTable
from services.metrics import store
from services.metrics.archive import ArchiveStore, open_archive
from services.metrics.domain import (
    EVENTS_TABLE,
    METRICS_TABLE,
    event_cutoff,
    metrics_cutoff,
    partition_range,
)
from services.metrics.settings import load_settings

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

LOCK_TIMEOUT = "2s"
FORMAT = "csv.gz"
# The temporary table an archive is read back into before its partition goes.
_CHECK_TABLE = "archive_check"


class ArchiveError(OperationFailed):
    """A step of archival or restore failed; the data it concerns is untouched."""


@dataclass(frozen=True)
class Manifest:
    table: str
    partition: str
    format: str
    data_file: str
    columns: list[str]
    rows: int
    range_start: str
    range_end: str
    min_created_at: str | None
    max_created_at: str | None
    sha256: str
    bytes: int
    # bit_xor of hashtextextended(ROW(<columns>)::text, 0) over the rows: equal
    # sets of rows give equal fingerprints whatever their order.
    fingerprint: str
    archived_at: str


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    """Retention: event partitions older than 2 years archived, then dropped;
    daily metrics older than 3 years removed."""
    return await apply_retention(conn, open_archive(load_settings()), today)


async def apply_retention(
    conn: asyncpg.Connection, archive: ArchiveStore, today: date
) -> list[str]:
    return await archive_expired(conn, archive, today) + await remove_expired_metrics(conn, today)


async def expired_partitions(
    conn: asyncpg.Connection, spec: PartitionedTable, cutoff: date
) -> list[tuple[str, date, date]]:
    expired = []
    for name in await store.partitions_of(conn, spec.table):
        bounds = partition_range(spec, name)
        if bounds is not None and bounds[1] <= cutoff:
            expired.append((name, *bounds))
    return expired


async def _export(conn: asyncpg.Connection, table: str, columns: list[str], target: Path) -> None:
    with gzip.open(target, "wb", compresslevel=6) as compressed:

        async def write(chunk: bytes) -> None:
            compressed.write(chunk)

        await store.export_csv(conn, table, columns, write)


def _sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


class _Digesting(io.RawIOBase):
    """A binary file read once, forward, taking its SHA-256 on the way."""

    def __init__(self, raw: io.BufferedReader) -> None:
        super().__init__()
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._raw.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:count])
        return count


async def _load(conn: asyncpg.Connection, source: Path, table: str, columns: list[str]) -> str:
    """Loads a gzip CSV archive into `table`; returns the SHA-256 of the file."""
    with source.open("rb") as raw:
        digesting = _Digesting(raw)
        with gzip.GzipFile(fileobj=digesting, mode="rb") as rows:
            # COPY reads to the end of the gzip stream, and gzip to the end of
            # the file (zero padding skipped, anything else refused), so every
            # byte of the file went through the digest.
            await store.load_csv(conn, table, columns, cast(BinaryIO, rows))
    return digesting.sha256.hexdigest()


async def _read_back(
    conn: asyncpg.Connection, archive: ArchiveStore, manifest: Manifest, folder: Path, table: str
) -> None:
    """Fetches the archived file and loads it into `table` (which exists), then
    checks that it holds the rows the manifest counts and is the file written."""
    copy = folder / f"read-back-{manifest.data_file}"
    try:
        await archive.fetch(manifest.data_file, copy)
    except OSError as error:
        raise ArchiveError(
            f"{manifest.partition}: reading the archive back failed: {error}"
        ) from error
    try:
        sha256 = await _load(conn, copy, table, manifest.columns)
    except (OSError, EOFError, zlib.error, asyncpg.PostgresError) as error:
        raise ArchiveError(f"{manifest.partition}: the archive does not load: {error}") from error
    stats = await store.row_stats(conn, table, manifest.columns)
    if (stats.rows, stats.fingerprint) != (manifest.rows, manifest.fingerprint):
        raise ArchiveError(
            f"{manifest.partition}: the archive holds {stats.rows} rows (fingerprint"
            f" {stats.fingerprint}), the partition {manifest.rows} ({manifest.fingerprint})"
        )
    if sha256 != manifest.sha256:
        raise ArchiveError(
            f"{manifest.partition}: the archive read back differs from the one written"
        )


async def archive_partition(
    conn: asyncpg.Connection, archive: ArchiveStore, name: str, start: date, end: date
) -> Manifest:
    """Archives one lifecycle_events partition, verifies the archive, then drops it.

    The rollups' lock is taken before the partition is detached, so that the
    partition does not go while a rollup reads its days (a rollup checks its
    days once it has the lock). It waits for a running rollup to end rather
    than fail after the lock timeout: a rollup is bounded (1100 days at most),
    and the partition meanwhile stays locked as during the export. A rollup
    takes this lock before any table lock, so the two cannot deadlock."""
    try:
        async with conn.transaction():
            await store.lock_partition(conn, name, LOCK_TIMEOUT)
            with tempfile.TemporaryDirectory(prefix="lifecycle-archive-") as scratch:
                manifest = await _write_archive(conn, archive, name, (start, end), Path(scratch))
                await store.create_check_table(conn, _CHECK_TABLE)
                await _read_back(conn, archive, manifest, Path(scratch), _CHECK_TABLE)
            await store.wait_for_rollups(conn, LOCK_TIMEOUT)
            await store.detach_and_drop(conn, name)
            await store.forget_erased_events(conn, start, end)
            await store.record_archive(
                conn,
                name,
                (_midnight(start), _midnight(end)),
                archive.location(manifest.data_file),
                json.dumps(asdict(manifest)),
            )
    except asyncpg.LockNotAvailableError as error:
        raise ArchiveError(f"{name}: the partition is busy, left in place: {error}") from error
    return manifest


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _write_archive(
    conn: asyncpg.Connection,
    archive: ArchiveStore,
    name: str,
    bounds: tuple[date, date],
    folder: Path,
) -> Manifest:
    start, end = bounds
    columns = await store.columns_of(conn, name)
    stats = await store.row_stats(conn, name, columns)
    data_file = f"{name}.{FORMAT}"
    data = folder / data_file
    try:
        await _export(conn, name, columns, data)
        manifest = Manifest(
            table=EVENTS_TABLE.table,
            partition=name,
            format=FORMAT,
            data_file=data_file,
            columns=columns,
            rows=stats.rows,
            range_start=_midnight(start).isoformat(),
            range_end=_midnight(end).isoformat(),
            min_created_at=stats.min_created_at,
            max_created_at=stats.max_created_at,
            sha256=_sha256(data),
            bytes=data.stat().st_size,
            fingerprint=stats.fingerprint,
            archived_at=datetime.now(UTC).isoformat(),
        )
        manifest_file = folder / f"{name}.manifest.json"
        manifest_file.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        await archive.put(data_file, data)
        await archive.put(manifest_file.name, manifest_file)
    except OSError as error:
        raise ArchiveError(f"{name}: writing the archive failed: {error}") from error
    return manifest


async def read_manifest(archive: ArchiveStore, partition: str) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="lifecycle-restore-") as scratch:
        path = Path(scratch) / "manifest.json"
        try:
            await archive.fetch(f"{partition}.manifest.json", path)
        except OSError as error:
            raise ArchiveError(f"{partition}: no archive manifest: {error}") from error
        fields: dict[str, Any] = json.loads(path.read_text())
    return Manifest(**fields)


async def archives(conn: asyncpg.Connection) -> list[store.ArchivedPartition]:
    """The partitions archived, in name order, and where each went."""
    return await store.archived_partitions(conn)


async def restore_partition(
    conn: asyncpg.Connection, archive: ArchiveStore, partition: str, target: str
) -> int:
    """Loads an archived partition into a new table `target` (same columns as
    lifecycle_events), verified against its manifest; the events of users erased
    since the archive was written are left out, as the erase removed them from
    the live log. Returns the rows restored."""
    manifest = await read_manifest(archive, partition)
    async with conn.transaction():
        await store.create_events_table(conn, target)
        with tempfile.TemporaryDirectory(prefix="lifecycle-restore-") as scratch:
            await _read_back(conn, archive, manifest, Path(scratch), target)
        erased = await store.remove_erased(conn, target)
    return manifest.rows - erased


async def archive_expired(
    conn: asyncpg.Connection, archive: ArchiveStore, today: date
) -> list[str]:
    """Archives every event partition older than the retention; one failure
    does not stop the others, and is reported."""
    lines = []
    for name, start, end in await expired_partitions(conn, EVENTS_TABLE, event_cutoff(today)):
        try:
            manifest = await archive_partition(conn, archive, name, start, end)
        except ArchiveError as error:
            lines.append(f"archival failed, partition kept: {error}")
            continue
        lines.append(
            f"archived {name} ({manifest.rows} rows) to {archive.location(manifest.data_file)}"
        )
    return lines


async def remove_expired_metrics(conn: asyncpg.Connection, today: date) -> list[str]:
    """Drops the metrics_daily partitions older than the retention, then the
    older rows of the oldest partition kept, so that rows live exactly 3 years."""
    cutoff = metrics_cutoff(today)
    lines = []
    for name, _, _ in await expired_partitions(conn, METRICS_TABLE, cutoff):
        async with conn.transaction():
            await store.drop_metrics_partition(conn, name, LOCK_TIMEOUT)
        lines.append(f"dropped {name}")
    removed = await store.delete_metrics_before(conn, cutoff)
    lines.append(f"removed {removed} metrics_daily rows before {cutoff}")
    return lines
