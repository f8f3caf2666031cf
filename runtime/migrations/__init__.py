"""Versioned schema migrations, one schema and one role per service.

`migrate` runs under a PostgreSQL advisory lock, so replicas starting at once
take turns, and is idempotent: applied migrations are recorded with a
checksum and skipped (a changed checksum is an error). For each service it
 1. creates the service's role and schema (owned by the role) if missing,
 2. switches to the role, so that everything created belongs to the service,
 3. applies the runtime's shared tables, then the service's own migrations,
 4. creates the time partitions its partitioned tables need.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg

from runtime.partitions import PartitionedTable, ensure_partitions

log = logging.getLogger(__name__)

RUNTIME_MIGRATIONS = Path(__file__).parent  # the SQL files beside this module
# pg_advisory_lock key shared by every migrator of the suite ("lifecycle" in ASCII).
LOCK_KEY = 0x6C6966656379636C
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaOwner:
    """What to migrate for one service: where, as whom, and with which files."""

    schema: str
    role: str
    password: str | None
    migrations: Path
    partitioned_tables: tuple[PartitionedTable, ...] = ()


def load_migrations(folder: Path, component: str) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        migrations.append(Migration(component, int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version number")
    return migrations


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate(
    admin_url: str, owners: Sequence[SchemaOwner], today: date | None = None
) -> list[str]:
    """Brings every owner's schema up to date; returns what was applied."""
    today = today or datetime.now(UTC).date()
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            applied: list[str] = []
            for owner in owners:
                applied += await _migrate_owner(conn, owner, today)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def _migrate_owner(conn: asyncpg.Connection, owner: SchemaOwner, today: date) -> list[str]:
    await _bootstrap(conn, owner)
    async with acting_as(conn, owner):
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
            " checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        applied = [
            await _apply(conn, owner.schema, migration) for migration in await _pending(conn, owner)
        ]
        for spec in owner.partitioned_tables:
            await ensure_partitions(conn, spec, today)
        return applied


async def _pending(conn: asyncpg.Connection, owner: SchemaOwner) -> list[Migration]:
    """The runtime's and the service's migrations not applied yet; an applied one
    whose file changed is an error."""
    done = {
        (r["component"], r["version"]): r["checksum"]
        for r in await conn.fetch("SELECT component, version, checksum FROM schema_migrations")
    }
    pending = []
    for migration in load_migrations(RUNTIME_MIGRATIONS, "runtime") + load_migrations(
        owner.migrations, owner.schema
    ):
        checksum = done.get((migration.component, migration.version))
        if checksum is None:
            pending.append(migration)
        elif checksum != migration.checksum:
            raise MigrationError(
                f"{owner.schema}: migration {migration.component} "
                f"{migration.version:04d}_{migration.name} changed after it was applied; "
                "add a new migration instead"
            )
    return pending


async def _apply(conn: asyncpg.Connection, schema: str, migration: Migration) -> str:
    async with conn.transaction():
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (component, version, name, checksum) "
            "VALUES ($1, $2, $3, $4)",
            migration.component,
            migration.version,
            migration.name,
            migration.checksum,
        )
    applied = f"{schema}: {migration.component} {migration.version:04d}_{migration.name}"
    log.info("applied migration %s", applied)
    return applied


@contextlib.asynccontextmanager
async def acting_as(conn: asyncpg.Connection, owner: SchemaOwner) -> AsyncIterator[None]:
    """Runs the block as the service's role in its schema, so that what it creates
    belongs to the service."""
    role, schema = quote_identifier(owner.role), quote_identifier(owner.schema)
    await conn.execute(f"SET ROLE {role}; SET search_path = {schema}")
    try:
        yield
    finally:
        await conn.execute("RESET ROLE; RESET search_path")


async def _bootstrap(conn: asyncpg.Connection, owner: SchemaOwner) -> None:
    """Role, schema and grants; the only part that needs the administrator's rights."""
    role, schema = quote_identifier(owner.role), quote_identifier(owner.schema)
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner.role):
        await conn.execute(f"CREATE ROLE {role} LOGIN")
    if owner.password is not None:
        literal = await conn.fetchval("SELECT quote_literal($1)", owner.password)
        await conn.execute(f"ALTER ROLE {role} PASSWORD {literal}")
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        # Lets a non-superuser administrator SET ROLE to create objects the service owns.
        await conn.execute(f"GRANT {role} TO CURRENT_USER")
    database = quote_identifier(await conn.fetchval("SELECT current_database()"))
    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}")
