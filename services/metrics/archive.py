"""Retention: lifecycle_events partitions older than 2 years go to cold storage,
metrics_daily rows older than 3 years are removed.

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

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast
from urllib.parse import urlsplit

import asyncpg
import boto3
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from runtime.errors import OperationFailed
from runtime.migrations import quote_identifier
from runtime.partitions import PartitionedTable, shift
from services.metrics import store
from services.metrics.domain import EVENTS_TABLE, METRICS_TABLE
from services.metrics.settings import MetricsSettings

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

EVENT_RETENTION_MONTHS = 24
METRICS_RETENTION_YEARS = 3
LOCK_TIMEOUT = "2s"
FORMAT = "csv.gz"


class ArchiveError(OperationFailed):
    """A step of archival or restore failed; the data it concerns is untouched."""


class ArchiveStore(Protocol):
    """Cold storage of archive files, by name. A failure is an OSError."""

    def location(self, name: str) -> str: ...

    async def put(self, name: str, source: Path) -> None: ...

    async def fetch(self, name: str, target: Path) -> None: ...


class FolderArchive:
    """Archives in a local (or mounted) folder; a file appears whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, name: str) -> str:
        return (self.root / name).as_uri()

    async def put(self, name: str, source: Path) -> None:
        await asyncio.to_thread(self._put, name, source)

    def _put(self, name: str, source: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{name}.partial"
        with source.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
        partial.replace(self.root / name)

    async def fetch(self, name: str, target: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, self.root / name, target)


class BucketArchive:
    """Archives in an S3-compatible bucket, under a prefix. An object appears
    whole or not at all: S3 shows an upload only once it is complete."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = boto3.client("s3", endpoint_url=endpoint)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    async def put(self, name: str, source: Path) -> None:
        await self._call(name, self._client.upload_file, str(source), self.bucket, self._key(name))

    async def fetch(self, name: str, target: Path) -> None:
        await self._call(
            name, self._client.download_file, self.bucket, self._key(name), str(target)
        )

    async def _call(self, name: str, method: Callable[..., None], *args: str) -> None:
        try:
            await asyncio.to_thread(method, *args)
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise OSError(f"{self.location(name)}: {error}") from error


def open_archive(settings: MetricsSettings) -> ArchiveStore:
    """The cold storage the settings name."""
    parts = urlsplit(settings.archive_url)
    if parts.scheme == "s3":
        return BucketArchive(parts.netloc, parts.path.strip("/"), settings.archive_endpoint)
    return FolderArchive(Path(settings.archive_url))


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


@dataclass(frozen=True)
class RowStats:
    rows: int
    min_created_at: str | None
    max_created_at: str | None
    fingerprint: str


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


def partition_range(spec: PartitionedTable, name: str) -> tuple[date, date] | None:
    """The [start, end) of a partition named by runtime.partitions, else None."""
    prefix = f"{spec.table}_"
    parts = name.removeprefix(prefix).split("_")
    if not name.startswith(prefix) or len(parts) != (2 if spec.period == "month" else 1):
        return None
    try:
        start = date(int(parts[0]), int(parts[1]) if spec.period == "month" else 1, 1)
    except ValueError:
        return None
    return start, shift(start, spec.period, 1)


def _years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


def event_cutoff(today: date) -> date:
    """Event partitions ending on or before this day are archived."""
    return _years_before(today, EVENT_RETENTION_MONTHS // 12)


def metrics_cutoff(today: date) -> date:
    """metrics_daily rows before this day are removed."""
    return _years_before(today, METRICS_RETENTION_YEARS)


async def expired_partitions(
    conn: asyncpg.Connection, spec: PartitionedTable, cutoff: date
) -> list[tuple[str, date, date]]:
    expired = []
    for name in await store.partitions_of(conn, spec.table):
        bounds = partition_range(spec, name)
        if bounds is not None and bounds[1] <= cutoff:
            expired.append((name, *bounds))
    return expired


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1)"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [r["attname"] for r in rows]


async def _export(conn: asyncpg.Connection, table: str, columns: list[str], target: Path) -> None:
    column_list = ", ".join(quote_identifier(c) for c in columns)
    with gzip.open(target, "wb", compresslevel=6) as compressed:

        async def write(chunk: bytes) -> None:
            compressed.write(chunk)

        await conn.copy_from_query(
            f"SELECT {column_list} FROM {quote_identifier(table)} ORDER BY id",
            output=write,
            format="csv",
            header=True,
        )


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
            await conn.copy_to_table(
                table, source=cast(BinaryIO, rows), columns=columns, format="csv", header=True
            )
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
    stats = await row_stats(conn, table, manifest.columns)
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
    """Archives one lifecycle_events partition, verifies the archive, then drops it."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute(f"LOCK TABLE {quote_identifier(name)} IN SHARE MODE")
            with tempfile.TemporaryDirectory(prefix="lifecycle-archive-") as scratch:
                manifest = await _write_archive(conn, archive, name, (start, end), Path(scratch))
                await conn.execute(
                    "CREATE TEMPORARY TABLE archive_check"
                    f" (LIKE {EVENTS_TABLE.table}) ON COMMIT DROP"
                )
                await _read_back(conn, archive, manifest, Path(scratch), "archive_check")
            await _wait_for_rollups(conn)
            await conn.execute(
                f"ALTER TABLE {EVENTS_TABLE.table} DETACH PARTITION {quote_identifier(name)}"
            )
            await conn.execute(f"DROP TABLE {quote_identifier(name)}")
            await store.forget_erased_events(conn, start, end)
            await conn.execute(
                "INSERT INTO archived_partitions"
                " (partition_name, range_start, range_end, data_location, manifest)"
                " VALUES ($1, $2, $3, $4, $5::text::jsonb)"
                " ON CONFLICT (partition_name) DO UPDATE SET"
                " data_location = excluded.data_location, manifest = excluded.manifest,"
                " archived_at = now()",
                name,
                _midnight(start),
                _midnight(end),
                archive.location(manifest.data_file),
                json.dumps(asdict(manifest)),
            )
    except asyncpg.LockNotAvailableError as error:
        raise ArchiveError(f"{name}: the partition is busy, left in place: {error}") from error
    return manifest


async def _wait_for_rollups(conn: asyncpg.Connection) -> None:
    """Takes the rollups' lock for the rest of the transaction, so that the
    partition does not go while a rollup reads its days (a rollup checks its
    days once it has the lock). It waits for a running rollup to end rather
    than fail after the lock timeout: a rollup is bounded (1100 days at most),
    and the partition meanwhile stays locked as during the export. A rollup
    takes this lock before any table lock, so the two cannot deadlock."""
    await conn.execute("SET LOCAL lock_timeout = 0")
    await store.lock_rollups(conn)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


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
    columns = await _columns(conn, name)
    stats = await row_stats(conn, name, columns)
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


async def restore_partition(
    conn: asyncpg.Connection, archive: ArchiveStore, partition: str, target: str
) -> int:
    """Loads an archived partition into a new table `target` (same columns as
    lifecycle_events), verified against its manifest; the events of users erased
    since the archive was written are left out, as the erase removed them from
    the live log. Returns the rows restored."""
    manifest = await read_manifest(archive, partition)
    async with conn.transaction():
        await conn.execute(f"CREATE TABLE {quote_identifier(target)} (LIKE {EVENTS_TABLE.table})")
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
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute(f"DROP TABLE {quote_identifier(name)}")
        lines.append(f"dropped {name}")
    status = await conn.execute(f"DELETE FROM {METRICS_TABLE.table} WHERE metric_date < $1", cutoff)
    lines.append(f"removed {status.split()[-1]} metrics_daily rows before {cutoff}")
    return lines


async def apply_retention(
    conn: asyncpg.Connection, archive: ArchiveStore, today: date
) -> list[str]:
    return await archive_expired(conn, archive, today) + await remove_expired_metrics(conn, today)
