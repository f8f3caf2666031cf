"""Retention and archival against a real PostgreSQL and a real folder (and a
real S3-compatible server on loopback): event
partitions past 2 years are archived, verified and dropped, a restore gives
back the same rows, every failure leaves the data in place, and nothing
inside the retention windows is touched."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import grpc
import pytest
from moto.server import ThreadedMotoServer

from lifecycle.metrics.v1 import metrics_pb2
from runtime.chains import stored
from runtime.clock import ManualClock
from runtime.partitions import ensure_partitions
from services.metrics.archive import ArchiveStore, BucketArchive, FolderArchive
from services.metrics.domain import METRICS_TABLE
from services.metrics.maintenance import (
    ArchiveError,
    archive_expired,
    archive_partition,
    restore_partition,
)
from services.metrics.service import DEFINITION
from services.metrics.settings import ARCHIVE_ENDPOINT_VARIABLE, ARCHIVE_VARIABLE
from suite.cli import main
from tests.metrics.conftest import as_metrics, at, create_partitions, serve_metrics
from tests.support import ScratchDatabase, error_info, free_port, rpc_error

TODAY = date(2026, 11, 26)
# Event partitions ending on or before 2024-11-26 go; November 2024 stays.
ARCHIVED = ("lifecycle_events_2024_09", "lifecycle_events_2024_10")
KEPT = "lifecycle_events_2024_11"
ERASED_USER = uuid.uuid4()

_INSERT = (
    "INSERT INTO lifecycle_events (event_id, event_type, user_id, workflow_execution_id,"
    " lifecycle_stage, event_data, created_at, producer, actors)"
    " SELECT gen_random_uuid(), e.t, e.u, NULL, e.s, e.d::jsonb, e.at, 'tests',"
    f" NULLIF({stored('e.a')}, '{{}}')"
    " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],"
    " $6::jsonb[]) AS e(t, u, s, d, at, a)"
)


def awkward_data(n: int) -> str:
    """JSON that CSV must carry intact: quotes, commas, newlines, unicode, nulls."""
    return json.dumps({"n": n, "text": f'a "quoted", line\nbreak é€ {n}', "none": None})


def awkward_actors(n: int) -> tuple[str, ...]:
    """Chains that an array in CSV must carry intact (none for the oldest events)."""
    return () if n % 3 == 0 else (f'{{a "b", c}} é\\{n}', "service:triggers")


async def insert_events(conn: asyncpg.Connection, month: date, count: int) -> None:
    users = [ERASED_USER if n % 5 == 0 else uuid.uuid4() for n in range(count)]
    await conn.execute(
        _INSERT,
        [f"tracked.t{n % 3}" for n in range(count)],
        users,
        [None if n % 4 == 0 else "Activation" for n in range(count)],
        [awkward_data(n) for n in range(count)],
        [
            datetime(month.year, month.month, 1, tzinfo=UTC) + timedelta(hours=7 * n)
            for n in range(count)
        ],
        [json.dumps(awkward_actors(n)) for n in range(count)],
    )


async def rows_of(conn: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")]


async def partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'lifecycle_events'::regclass"
    )
    return {r["relname"] for r in rows}


@pytest.fixture(scope="module")
async def originals(own_database: ScratchDatabase) -> dict[str, list[tuple[Any, ...]]]:
    """Rows in September and November 2024 (October is empty), kept as they were."""
    await create_partitions(own_database, date(2024, 9, 1))
    async with as_metrics(own_database) as conn:
        await insert_events(conn, date(2024, 9, 1), 60)
        await insert_events(conn, date(2024, 11, 1), 40)
        return {name: await rows_of(conn, name) for name in (*ARCHIVED, KEPT)}


class Unreadable(FolderArchive):
    """Cold storage that takes files but fails to hand them back."""

    async def fetch(self, name: str, target: Path) -> None:
        raise OSError(f"{self.location(name)}: connection reset by peer")


class Corrupting(FolderArchive):
    """Cold storage that hands back a damaged copy of what it was given."""

    async def fetch(self, name: str, target: Path) -> None:
        await super().fetch(name, target)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))


def without_column(target: Path, column: str) -> None:
    """Rewrites a gzip CSV archive without one of its columns."""
    with gzip.open(target, "rt", newline="") as source:
        header, *records = list(csv.reader(source))
    at = header.index(column)
    with gzip.open(target, "wt", newline="") as copy:
        csv.writer(copy, lineterminator="\n").writerows(
            row[:at] + row[at + 1 :] for row in [header, *records]
        )


def rewrite_csv(target: Path, keep: slice) -> None:
    """Rewrites a fetched archive as a valid gzip CSV of the header and the records in `keep`."""
    with gzip.open(target, "rt", newline="") as source:
        header, *records = list(csv.reader(source))
    with gzip.open(target, "wt", newline="") as copy:
        csv.writer(copy, lineterminator="\n").writerows([header, *records[keep]])


class DroppingARow(FolderArchive):
    """Cold storage that hands back a valid archive with its last row missing."""

    async def fetch(self, name: str, target: Path) -> None:
        await super().fetch(name, target)
        rewrite_csv(target, slice(None, -1))


class Recompressing(FolderArchive):
    """Cold storage that hands back the same rows in a file of other bytes."""

    async def fetch(self, name: str, target: Path) -> None:
        await super().fetch(name, target)
        rewrite_csv(target, slice(None))


class Padding(FolderArchive):
    """Cold storage that hands back the file with zero bytes after it, which
    gzip skips: the rows load whole, only the checksum can tell."""

    async def fetch(self, name: str, target: Path) -> None:
        await super().fetch(name, target)
        with target.open("ab") as copy:
            copy.write(bytes(512))


FAILING_STORES: list[tuple[Callable[[Path], ArchiveStore], str]] = [
    (lambda folder: FolderArchive(folder / "a-file" / "archive"), "writing the archive failed"),
    (Unreadable, "reading the archive back failed: .*connection reset"),
    (Corrupting, "the archive does not load"),
    (DroppingARow, "the archive holds 59 rows .*, the partition 60"),
    (Recompressing, "differs from the one written"),
    (Padding, "differs from the one written"),
]


@pytest.mark.parametrize(("store", "message"), FAILING_STORES)
async def test_each_failure_of_archival_leaves_the_partition_in_place_and_is_reported(
    own_database: ScratchDatabase,
    originals: dict[str, list[tuple[Any, ...]]],
    tmp_path: Path,
    store: Callable[[Path], ArchiveStore],
    message: str,
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    name = ARCHIVED[0]
    async with as_metrics(own_database) as conn:
        with pytest.raises(ArchiveError, match=message):
            await archive_partition(
                conn, store(tmp_path), name, date(2024, 9, 1), date(2024, 10, 1)
            )
        lines = await archive_expired(conn, store(tmp_path), TODAY)
        assert lines[0].startswith(f"archival failed, partition kept: {name}: ")
        assert re.search(message, lines[0])
        assert set(ARCHIVED) <= await partitions(conn)
        for kept in ARCHIVED:
            assert await rows_of(conn, kept) == originals[kept]
        assert await conn.fetchval("SELECT count(*) FROM archived_partitions") == 0


async def test_archival_leaves_a_partition_in_use_in_place(
    own_database: ScratchDatabase, originals: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    name = ARCHIVED[0]
    async with as_metrics(own_database) as conn:
        # A reader of the parent keeps the detach waiting past its lock timeout.
        reader = await asyncpg.connect(own_database.admin_url)
        try:
            async with reader.transaction():
                await reader.fetch("SELECT 1 FROM metrics.lifecycle_events LIMIT 1")
                with pytest.raises(ArchiveError, match="busy"):
                    await archive_partition(
                        conn,
                        FolderArchive(tmp_path / "ok"),
                        name,
                        date(2024, 9, 1),
                        date(2024, 10, 1),
                    )
        finally:
            await reader.close()
        assert name in await partitions(conn)
        assert await rows_of(conn, name) == originals[name]
        assert await conn.fetchval("SELECT count(*) FROM archived_partitions") == 0


@pytest.fixture(scope="module")
async def archived(
    own_database: ScratchDatabase,
    originals: dict[str, list[tuple[Any, ...]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Path]:
    """`lifecycle maintenance`'s retention run on TODAY, archiving to a folder."""
    folder = tmp_path_factory.mktemp("archive")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ARCHIVE_VARIABLE, str(folder))
        async with as_metrics(own_database) as conn:
            assert DEFINITION.maintenance is not None
            lines = await DEFINITION.maintenance(conn, TODAY)
    assert [line.split(" (")[0] for line in lines[:2]] == [f"archived {n}" for n in ARCHIVED]
    yield folder


async def test_old_partitions_are_archived_with_a_manifest_and_dropped(
    own_database: ScratchDatabase, originals: dict[str, list[tuple[Any, ...]]], archived: Path
) -> None:
    async with as_metrics(own_database) as conn:
        remaining = await partitions(conn)
        assert not remaining & set(ARCHIVED)
        assert await rows_of(conn, KEPT) == originals[KEPT]
        recorded = await conn.fetch(
            "SELECT partition_name, data_location FROM archived_partitions ORDER BY 1"
        )
    assert [r["partition_name"] for r in recorded] == list(ARCHIVED)
    for name in ARCHIVED:
        manifest = json.loads((archived / f"{name}.manifest.json").read_text())
        data = archived / f"{name}.csv.gz"
        assert manifest["rows"] == len(originals[name])
        assert manifest["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert manifest["range_start"].startswith(name[-7:].replace("_", "-"))
        with gzip.open(data, "rt") as lines:
            assert sum(1 for _ in lines) > len(originals[name])  # header + multi-line values
    assert manifest_times(archived, ARCHIVED[0]) == (
        originals[ARCHIVED[0]][0][6].isoformat(),
        originals[ARCHIVED[0]][-1][6].isoformat(),
    )


def manifest_times(folder: Path, name: str) -> tuple[str, str]:
    manifest = json.loads((folder / f"{name}.manifest.json").read_text())
    return manifest["min_created_at"], manifest["max_created_at"]


async def test_a_restored_archive_matches_the_original_rows(
    own_database: ScratchDatabase, originals: dict[str, list[tuple[Any, ...]]], archived: Path
) -> None:
    name = ARCHIVED[0]
    async with as_metrics(own_database) as conn:
        restored = await restore_partition(conn, FolderArchive(archived), name, "restored_sep")
        assert restored == len(originals[name])
        assert await rows_of(conn, "restored_sep") == originals[name]


async def test_an_archive_written_before_events_had_actors_restores_without_them(
    own_database: ScratchDatabase,
    originals: dict[str, list[tuple[Any, ...]]],
    archived: Path,
    tmp_path: Path,
) -> None:
    """An archive holds the columns of its day: restored into today's table,
    the columns added since stay empty, and it verifies against its manifest as
    the release that wrote it computed it (over the rows it had)."""
    name = ARCHIVED[0]
    data, manifest_file = tmp_path / f"{name}.csv.gz", tmp_path / f"{name}.manifest.json"
    data.write_bytes((archived / data.name).read_bytes())
    without_column(data, "actors")
    manifest = json.loads((archived / manifest_file.name).read_text())
    columns = [c for c in manifest["columns"] if c != "actors"]
    async with as_metrics(own_database) as conn:
        await restore_partition(conn, FolderArchive(archived), name, "restored_whole")
        listed = ", ".join(columns)
        fingerprint = await conn.fetchval(
            f"SELECT bit_xor(hashtextextended(t::text, 0))::text"
            f" FROM (SELECT {listed} FROM restored_whole) t"
        )
        manifest.update(
            columns=columns,
            fingerprint=fingerprint,
            sha256=hashlib.sha256(data.read_bytes()).hexdigest(),
            bytes=data.stat().st_size,
        )
        manifest_file.write_text(json.dumps(manifest))
        restored = await restore_partition(conn, FolderArchive(tmp_path), name, "restored_old")
        rows = await rows_of(conn, "restored_old")
    assert restored == len(originals[name])
    assert [row[-1] for row in rows] == [None] * restored
    assert [row[:-1] for row in rows] == [row[:-1] for row in originals[name]]
    assert any(row[-1] for row in originals[name]), "the archive written today has them"


async def test_a_restore_refuses_an_archive_that_does_not_match_its_manifest(
    own_database: ScratchDatabase, archived: Path, tmp_path: Path
) -> None:
    name = ARCHIVED[0]
    for suffix in (".csv.gz", ".manifest.json"):
        (tmp_path / f"{name}{suffix}").write_bytes((archived / f"{name}{suffix}").read_bytes())
    manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
    manifest["rows"] -= 1
    (tmp_path / f"{name}.manifest.json").write_text(json.dumps(manifest))
    async with as_metrics(own_database) as conn:
        with pytest.raises(ArchiveError, match="holds"):
            await restore_partition(conn, FolderArchive(tmp_path), name, "restored_bad")
        assert await conn.fetchval("SELECT to_regclass('restored_bad')") is None


async def test_a_user_erased_after_archival_is_left_out_of_a_restore(
    own_database: ScratchDatabase, originals: dict[str, list[tuple[Any, ...]]], archived: Path
) -> None:
    async with as_metrics(own_database) as conn:
        await conn.execute("INSERT INTO erased_users (user_id) VALUES ($1)", ERASED_USER)
        try:
            restored = await restore_partition(
                conn, FolderArchive(archived), ARCHIVED[0], "restored_erased"
            )
            rows = await rows_of(conn, "restored_erased")
        finally:
            await conn.execute("DELETE FROM erased_users WHERE user_id = $1", ERASED_USER)
    others = [r for r in originals[ARCHIVED[0]] if r[2] != ERASED_USER]
    assert restored == len(rows) == 48
    assert rows == others


async def test_the_funnel_and_the_rollup_refuse_days_whose_events_were_archived(
    own_database: ScratchDatabase,
    archived: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The log has lost September and October 2024: a funnel over them would count
    nobody, a rollup would replace their metrics by nothing."""
    kept = (date(2024, 10, 15), "Activation", "entries", 3)
    metric = (
        "SELECT metric_value FROM metrics_daily WHERE metric_date = $1 AND lifecycle_stage = $2"
        " AND metric_name = $3"
    )
    async with as_metrics(own_database) as conn:
        await conn.execute(
            "INSERT INTO metrics_daily (metric_date, lifecycle_stage, metric_name, metric_value)"
            " VALUES ($1, $2, $3, $4)",
            *kept,
        )
    try:
        async with serve_metrics(own_database, ManualClock(at(TODAY))) as server:
            for call in (
                server.stub.GetStageFunnel(
                    metrics_pb2.GetStageFunnelRequest(
                        start_date="2024-10-31", end_date="2024-11-05"
                    )
                ),
                server.stub.RunRollup(
                    metrics_pb2.RunRollupRequest(start_date="2024-10-15", end_date="2024-10-15")
                ),
            ):
                error = await rpc_error(call)
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert error_info(error).reason == "EVENTS_ARCHIVED"
                assert error_info(error).metadata["logged_since"] == "2024-11-01"
                assert "2024-11-01" in str(error.details())
            funnel = await server.stub.GetStageFunnel(
                metrics_pb2.GetStageFunnelRequest(start_date="2024-11-01", end_date="2024-11-05")
            )
            assert len(funnel.stages) == 5
        monkeypatch.setenv("LIFECYCLE_DATABASE_URL", own_database.admin_url)
        command = ["rollup", "--from", "2024-10-01", "--to", "2024-11-02"]
        assert await asyncio.to_thread(main, command) == 1
        assert "2024-11-01" in capsys.readouterr().err
        async with as_metrics(own_database) as conn:
            assert await conn.fetchval(metric, *kept[:3]) == kept[3]
    finally:
        async with as_metrics(own_database) as conn:
            await conn.execute("DELETE FROM metrics_daily WHERE metric_date = $1", kept[0])


async def test_metrics_older_than_three_years_are_removed_and_no_younger_row(
    own_database: ScratchDatabase,
) -> None:
    async with as_metrics(own_database) as conn:
        await ensure_partitions(conn, METRICS_TABLE, date(2022, 1, 1))
        days = [date(2022, 6, 1), date(2023, 11, 25), date(2023, 11, 26), date(2024, 1, 1)]
        await conn.execute(
            "INSERT INTO metrics_daily (metric_date, lifecycle_stage, metric_name, metric_value,"
            " dimensions) SELECT d, 'all', 'events', 1, '{}' FROM unnest($1::date[]) d",
            days,
        )
        assert DEFINITION.maintenance is not None
        lines = await DEFINITION.maintenance(conn, TODAY)
        kept = await conn.fetch(
            "SELECT metric_date FROM metrics_daily WHERE metric_name = 'events' ORDER BY 1"
        )
        assert await conn.fetchval("SELECT to_regclass('metrics_daily_2022')") is None
        assert await conn.fetchval("SELECT to_regclass('metrics_daily_2023')") is not None
    assert [r["metric_date"] for r in kept] == days[2:]
    assert "dropped metrics_daily_2022" in lines


async def test_the_archive_command_lists_and_restores(
    own_database: ScratchDatabase,
    archived: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", own_database.admin_url)
    monkeypatch.setenv(ARCHIVE_VARIABLE, str(archived))
    assert await asyncio.to_thread(main, ["archive", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ARCHIVED)
    command = ["archive", "restore", ARCHIVED[1], "--into", "restored_oct"]
    assert await asyncio.to_thread(main, command) == 0
    assert "restored 0 rows" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["archive", "--today", TODAY.isoformat()]) == 0
    assert "nothing to archive" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["archive", "restore", "nope", "--into", "x"]) == 1


@pytest.fixture
def bucket_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-compatible HTTP server on loopback (moto's), with credentials
    in the environment as a deployment would give them; yields its endpoint."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "lifecycle"),
        ("AWS_SECRET_ACCESS_KEY", "lifecycle-secret"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
    ):
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv(ARCHIVE_ENDPOINT_VARIABLE, endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


async def test_archives_go_to_an_s3_bucket_and_come_back_from_it(
    own_database: ScratchDatabase,
    bucket_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, month = "lifecycle_events_2023_05", date(2023, 5, 1)
    async with as_metrics(own_database) as conn:
        await conn.execute(
            f"CREATE TABLE {name} PARTITION OF lifecycle_events"
            " FOR VALUES FROM ('2023-05-01') TO ('2023-06-01')"
        )
        await insert_events(conn, month, 30)
        original = await rows_of(conn, name)
        missing = BucketArchive("no-such-bucket", "events", bucket_server)
        with pytest.raises(ArchiveError, match="writing the archive failed"):
            await archive_partition(conn, missing, name, month, date(2023, 6, 1))
        assert await rows_of(conn, name) == original

    s3 = boto3.client("s3", endpoint_url=bucket_server)
    s3.create_bucket(Bucket="cold", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", own_database.admin_url)
    monkeypatch.setenv(ARCHIVE_VARIABLE, "s3://cold/lifecycle/events")
    assert await asyncio.to_thread(main, ["archive", "--today", "2025-06-01"]) == 0
    assert f"archived {name}" in capsys.readouterr().out
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket="cold")["Contents"]}
    assert stored == {f"lifecycle/events/{name}.csv.gz", f"lifecycle/events/{name}.manifest.json"}
    manifest = json.loads(
        s3.get_object(Bucket="cold", Key=f"lifecycle/events/{name}.manifest.json")["Body"].read()
    )
    assert manifest["rows"] == len(original)

    assert await asyncio.to_thread(main, ["archive", "list"]) == 0
    assert f"s3://cold/lifecycle/events/{name}.csv.gz" in capsys.readouterr().out
    command = ["archive", "restore", name, "--into", "restored_may"]
    assert await asyncio.to_thread(main, command) == 0
    async with as_metrics(own_database) as conn:
        assert await conn.fetchval("SELECT to_regclass($1)", name) is None
        assert await rows_of(conn, "restored_may") == original
