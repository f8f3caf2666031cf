"""The metrics service's `lifecycle` subcommands: archive and rollup.

lifecycle archive [--today D]              archive event partitions older than 2 years
lifecycle archive list                     what was archived, and where
lifecycle archive restore P --into T       load archived partition P into a new table T
lifecycle rollup [--from D --to D]         recompute daily metrics (default: trailing window)
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from services.metrics.archive import open_archive
from services.metrics.handlers import rollup, rollup_trailing
from services.metrics.maintenance import archive_expired, archives, restore_partition
from services.metrics.settings import load_settings


def add_commands(commands: Any) -> None:
    """Adds the metrics subcommands to the `lifecycle` parser's subparsers."""
    archive = commands.add_parser(
        "archive", help="archive lifecycle events older than 2 years; list or restore archives"
    )
    archive.add_argument("action", nargs="?", choices=("run", "list", "restore"), default="run")
    archive.add_argument("partition", nargs="?", help="restore: the archived partition")
    archive.add_argument("--into", help="restore: the table to create and fill")
    archive.add_argument(
        "--today", type=date.fromisoformat, help="run: the day retention counts from"
    )
    archive.set_defaults(run=_archive)
    roll = commands.add_parser("rollup", help="recompute the daily metrics of a date range")
    roll.add_argument("--from", dest="first", type=date.fromisoformat)
    roll.add_argument("--to", dest="last", type=date.fromisoformat)
    roll.set_defaults(run=_rollup)


async def _archive(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    archive = open_archive(load_settings())
    if args.action == "list":
        archived = await archives(conn)
        for partition in archived:
            print(f"{partition.name}\t{partition.rows} rows\t{partition.location}")
        if not archived:
            print("no archives")
    elif args.action == "restore":
        if not args.partition or not args.into:
            raise ValueError("archive restore needs a partition and --into TABLE")
        rows = await restore_partition(conn, archive, args.partition, args.into)
        print(f"restored {rows} rows of {args.partition} into {args.into}")
    else:
        today = args.today or datetime.now(UTC).date()
        for line in await archive_expired(conn, archive, today) or ["nothing to archive"]:
            print(line)


async def _rollup(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    if (args.first is None) != (args.last is None):
        raise ValueError("rollup needs both --from and --to, or neither")
    if args.first is not None and args.last < args.first:
        raise ValueError("rollup: --to is before --from")
    if args.first is None:
        today = datetime.now(UTC).date()
        result = await rollup_trailing(conn, today, load_settings().late_days)
    else:
        result = await rollup(conn, args.first, args.last)
    if result is None:
        print("nothing to roll up")
        return
    print(f"rolled up {result.first}..{result.through}: {result.rows_written} rows written")
