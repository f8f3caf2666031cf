"""The backup strategy of docs/operations.md, proven on real PostgreSQL 18 binaries:
a full base backup with WAL archiving, an incremental backup on top of it, more
writes, then a point-in-time restore of full + incremental + archived WAL to a
moment between two writes. A hole in the WAL archive makes the restore fail.

In production pgBackRest (through the operator) plays the part of
pg_basebackup, pg_combinebackup and the archive folder; the mechanism is the
same: a base backup made consistent and carried forward by archived WAL.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.pgtools import Server, Toolbox, ToolFailed, toolbox

SEED = "before the full backup"
BETWEEN_BACKUPS = "between the full and the incremental backup"
FIRST_WRITE = "first write after the incremental backup"
SECOND_WRITE = "second write, after the recovery target"


@dataclass(frozen=True)
class History:
    """A primary that was backed up, fully then incrementally, and written to afterwards."""

    box: Toolbox
    archive: Path
    full: Path
    incremental: Path
    # A moment after FIRST_WRITE committed and before SECOND_WRITE did.
    target_time: str
    # The archived WAL segment that holds FIRST_WRITE.
    first_write_segment: str


def write(primary: Server, note: str) -> None:
    primary.sql(f"INSERT INTO ledger (note) VALUES ('{note}')")


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    with toolbox() as box:
        archive = box.folder("archive")
        primary = box.server("primary")
        box.run("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "--no-sync")
        primary.configure(
            wal_level="replica",
            archive_mode="on",
            archive_command=f"test ! -f {archive}/%f && cp %p {archive}/%f",
            # WAL summaries are what an incremental backup is computed from.
            summarize_wal="on",
            fsync="off",
        )
        primary.start()
        primary.sql("CREATE TABLE ledger (id int GENERATED ALWAYS AS IDENTITY, note text)")
        write(primary, SEED)
        full = box.root / "full"
        box.run("pg_basebackup", *primary.connection_args(), "-D", str(full), "-c", "fast")
        write(primary, BETWEEN_BACKUPS)
        incremental = box.root / "incremental"
        box.run(
            "pg_basebackup", *primary.connection_args(), "-D", str(incremental), "-c", "fast",
            f"--incremental={full}/backup_manifest",
        )  # fmt: skip
        write(primary, FIRST_WRITE)
        [first_write_segment] = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        [target_time] = primary.sql("SELECT clock_timestamp()")
        primary.sql("SELECT pg_sleep(0.05)")
        write(primary, SECOND_WRITE)
        [last_segment] = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        primary.sql("SELECT pg_switch_wal()")
        wait_archived(primary, archive, last_segment)
        primary.stop()
        yield History(box, archive, full, incremental, target_time, first_write_segment)


def wait_archived(primary: Server, archive: Path, segment: str) -> None:
    primary.sql(
        "DO $$ BEGIN"
        "  FOR i IN 1..300 LOOP"
        f"    EXIT WHEN (SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver);"
        "    PERFORM pg_sleep(0.1);"
        "  END LOOP; END $$"
    )
    assert (archive / segment).exists(), "the WAL was not archived"


def combined(history: History, name: str) -> Server:
    """full + incremental, combined into a data folder ready to start, and verified."""
    box = history.box
    for backup in (history.full, history.incremental):
        box.run("pg_verifybackup", str(backup))
    output = box.root / name
    box.run("pg_combinebackup", str(history.full), str(history.incremental), "-o", str(output))
    box.run("pg_verifybackup", str(output))
    return box.server(name)


def recover_to_target(server: Server, history: History, archive: Path) -> None:
    server.configure(
        # The restored server must never write into the archive it restores from.
        archive_mode="off",
        restore_command=f"cp {archive}/%f %p",
        recovery_target_time=history.target_time,
        recovery_target_action="promote",
    )
    (server.data / "recovery.signal").touch()


def notes(server: Server) -> list[str]:
    return server.sql("SELECT note FROM ledger ORDER BY id")


def test_the_incremental_backup_holds_what_changed_since_the_full_one(history: History) -> None:
    manifest = (history.incremental / "backup_manifest").read_text()
    assert "INCREMENTAL." in manifest, "pg_basebackup made a full copy, not an incremental one"
    server = combined(history, "without-archive")
    server.start()
    try:
        assert notes(server) == [SEED, BETWEEN_BACKUPS]
    finally:
        server.stop()


def test_point_in_time_restore_stops_between_two_writes(history: History) -> None:
    server = combined(history, "restored")
    recover_to_target(server, history, history.archive)
    server.start()
    try:
        server.wait_until_promoted()
        assert notes(server) == [SEED, BETWEEN_BACKUPS, FIRST_WRITE]
        # Promotion starts a new timeline, so this history never mixes with the old one.
        assert (server.data / "pg_wal" / "00000002.history").exists()
        write(server, "the restored server takes writes")
    finally:
        server.stop()


def test_a_missing_wal_segment_makes_the_restore_fail(history: History) -> None:
    broken_archive = history.box.folder("broken-archive")
    for segment in history.archive.iterdir():
        if segment.name != history.first_write_segment:
            history.box.own(Path(shutil.copy(segment, broken_archive)))
    server = combined(history, "restored-from-broken-archive")
    recover_to_target(server, history, broken_archive)
    # It may die before it ever accepts a connection, or soon after.
    with contextlib.suppress(ToolFailed):
        server.start()
    server.wait_until_stopped()
    log = server.log.read_text()
    assert "FATAL:  recovery ended before configured recovery target was reached" in log
    assert not (server.data / "pg_wal" / "00000002.history").exists(), "it was promoted"
