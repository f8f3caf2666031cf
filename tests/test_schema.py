"""The schema against the design document, partitions, migrations and roles.

The design's SQL (docs/design/database-schema.md, a copy of the contract) is
run verbatim into a scratch schema, and every column, constraint and index of
ours is compared with it: the differences must be exactly the deviations that
docs/schema.md lists, no more and no fewer.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from runtime.config import service_role, with_database, with_user
from runtime.migrations import MigrationError, migrate, quote_identifier
from runtime.partitions import (
    PartitionedTable,
    ensure_partitions,
    partition_name,
    period_start,
    shift,
)
from suite.registry import DEFINITIONS, schema_owners
from tests.conftest import create_database, drop_database
from tests.support import ScratchDatabase, migration_count

pytestmark = pytest.mark.schema

DESIGN = Path(__file__).parents[1] / "docs" / "design" / "database-schema.md"
OWNERS = {
    "users": "users",
    "user_lifecycle_history": "users",
    "workflows": "workflows",
    "workflow_executions": "workflows",
    "user_segments": "segments",
    "user_segment_memberships": "segments",
    "triggers": "triggers",
    "trigger_executions": "triggers",
    "lifecycle_events": "metrics",
    "metrics_daily": "metrics",
}

# Every difference from the design, as listed in docs/schema.md: per service,
# what only the design has and what only ours has.
Fact = tuple[str, ...]


def _not_null(table: str, *columns: str) -> tuple[set[Fact], set[Fact]]:
    return (
        {("nullable", table, column, "YES") for column in columns},
        {("nullable", table, column, "NO") for column in columns},
    )


def _partitioned(table: str, key: str) -> tuple[set[Fact], set[Fact]]:
    return (
        {("constraint", table, "PRIMARY KEY (id)")},
        {
            ("constraint", table, f"PRIMARY KEY (id, {key})"),
            ("partitioned", table, f"RANGE ({key})"),
        },
    )


def _no_foreign_key(table: str, definition: str) -> tuple[set[Fact], set[Fact]]:
    return {("constraint", table, f"FOREIGN KEY {definition}")}, set()


def _merge(*parts: tuple[set[Fact], set[Fact]]) -> tuple[set[Fact], set[Fact]]:
    return set().union(*(p[0] for p in parts)), set().union(*(p[1] for p in parts))


DEVIATIONS: dict[str, tuple[set[Fact], set[Fact]]] = {
    "users": _merge(
        _not_null("users", "created_at", "updated_at", "attributes"),
        _not_null("user_lifecycle_history", "transitioned_at"),
        (
            set(),
            {
                ("constraint", "users", "CHECK (jsonb_typeof(attributes) = 'object'::text)"),
                ("constraint", "users", "CHECK (octet_length((attributes)::text) <= 65536)"),
                (
                    "index",
                    "users",
                    "CREATE UNIQUE INDEX idx_users_email_lower ON users"
                    " USING btree (lower((email)::text))",
                ),
                # ListUsers' page order (docs/schema.md).
                (
                    "index",
                    "users",
                    "CREATE INDEX idx_users_created_at_id ON users USING btree created_at, id",
                ),
            },
        ),
    ),
    "workflows": _merge(
        _not_null("workflows", "created_at", "updated_at"),
        _not_null("workflow_executions", "started_at"),
        _no_foreign_key("workflow_executions", "(user_id) REFERENCES users(id)"),
        (
            set(),
            {
                # The engine's columns: the pinned version, the conflict rule, call activities.
                (
                    "column",
                    "workflow_executions",
                    "workflow_version",
                    "character varying",
                    "50",
                    "",
                ),
                ("nullable", "workflow_executions", "workflow_version", "NO"),
                ("column", "workflow_executions", "exclusive", "boolean", "0", "true"),
                ("nullable", "workflow_executions", "exclusive", "NO"),
                ("column", "workflow_executions", "next_token", "integer", "0", "1"),
                ("nullable", "workflow_executions", "next_token", "NO"),
                ("column", "workflow_executions", "parent_execution_id", "uuid", "0", ""),
                ("nullable", "workflow_executions", "parent_execution_id", "YES"),
                ("column", "workflow_executions", "parent_token", "integer", "0", ""),
                ("nullable", "workflow_executions", "parent_token", "YES"),
                # Whom the execution works for (0004_execution_actors.sql).
                ("column", "workflow_executions", "actors", "ARRAY", "0", "'{}'::text[]"),
                ("nullable", "workflow_executions", "actors", "NO"),
                (
                    "constraint",
                    "workflow_executions",
                    "FOREIGN KEY (workflow_id, workflow_version)"
                    " REFERENCES workflow_versions(workflow_id, version)",
                ),
                (
                    "index",
                    "workflow_executions",
                    "CREATE UNIQUE INDEX idx_executions_one_running ON workflow_executions"
                    " USING btree (workflow_id, user_id) WHERE (exclusive AND ((status)::text ="
                    " ANY ((ARRAY['pending'::character varying, 'running'::character varying])"
                    "::text[])))",
                ),
                (
                    "index",
                    "workflow_executions",
                    "CREATE INDEX idx_executions_finished ON workflow_executions"
                    " USING btree (completed_at) WHERE (completed_at IS NOT NULL)",
                ),
                (
                    "index",
                    "workflow_executions",
                    "CREATE INDEX idx_executions_parent ON workflow_executions"
                    " USING btree (parent_execution_id) WHERE (parent_execution_id IS NOT NULL)",
                ),
            },
        ),
    ),
    "segments": _merge(
        _not_null("user_segments", "created_at", "updated_at"),
        _no_foreign_key(
            "user_segment_memberships", "(user_id) REFERENCES users(id) ON DELETE CASCADE"
        ),
        (
            set(),
            {
                # A segment's members in user order: member pages and the refresh's diff.
                (
                    "index",
                    "user_segment_memberships",
                    "CREATE INDEX idx_memberships_segment_user ON user_segment_memberships"
                    " USING btree segment_id, user_id",
                ),
            },
        ),
    ),
    "triggers": _merge(
        _not_null("triggers", "created_at", "updated_at"),
        _not_null("trigger_executions", "executed_at"),
        _partitioned("trigger_executions", "executed_at"),
        _no_foreign_key("triggers", "(workflow_id) REFERENCES workflows(id)"),
        _no_foreign_key("trigger_executions", "(user_id) REFERENCES users(id)"),
        _no_foreign_key(
            "trigger_executions", "(workflow_execution_id) REFERENCES workflow_executions(id)"
        ),
        (
            set(),
            {
                # The re-entry policy, and what a trigger execution evaluated and why it
                # started nothing (services/triggers/migrations/0002_ingestion.sql).
                (
                    "column",
                    "triggers",
                    "reentry_mode",
                    "character varying",
                    "20",
                    "'every_time'::character varying",
                ),
                ("nullable", "triggers", "reentry_mode", "NO"),
                ("column", "triggers", "reentry_period", "interval", "0", ""),
                ("nullable", "triggers", "reentry_period", "YES"),
                (
                    "constraint",
                    "triggers",
                    "CHECK reentry_mode::text = ANY ARRAY['every_time'::character varying,"
                    " 'once_per_user'::character varying,"
                    " 'once_per_period'::character varying]::text[]",
                ),
                (
                    "constraint",
                    "triggers",
                    "CHECK reentry_mode::text = 'once_per_period'::text = reentry_period IS NOT"
                    " NULL AND reentry_period IS NULL OR reentry_period > '00:00:00'::interval",
                ),
                ("column", "trigger_executions", "event_type", "character varying", "100", ""),
                ("nullable", "trigger_executions", "event_type", "YES"),
                ("column", "trigger_executions", "message_id", "character varying", "200", ""),
                ("nullable", "trigger_executions", "message_id", "YES"),
                ("column", "trigger_executions", "skip_reason", "text", "0", ""),
                ("nullable", "trigger_executions", "skip_reason", "YES"),
                # A trigger's action may be a signal, and a firing records its broadcast
                # (services/triggers/migrations/0004_signal_actions.sql).
                ("column", "triggers", "signal_name", "character varying", "255", ""),
                ("nullable", "triggers", "signal_name", "YES"),
                ("constraint", "triggers", "CHECK workflow_id IS NULL <> signal_name IS NULL"),
                ("column", "trigger_executions", "signal_name", "character varying", "255", ""),
                ("nullable", "trigger_executions", "signal_name", "YES"),
                ("column", "trigger_executions", "signal_delivered", "integer", "0", ""),
                ("nullable", "trigger_executions", "signal_delivered", "YES"),
                ("column", "trigger_executions", "signal_started", "integer", "0", ""),
                ("nullable", "trigger_executions", "signal_started", "YES"),
            },
        ),
    ),
    "metrics": _merge(
        _not_null("lifecycle_events", "created_at"),
        _partitioned("lifecycle_events", "created_at"),
        _partitioned("metrics_daily", "metric_date"),
        _no_foreign_key("lifecycle_events", "(user_id) REFERENCES users(id)"),
        _no_foreign_key(
            "lifecycle_events", "(workflow_execution_id) REFERENCES workflow_executions(id)"
        ),
        (
            set(),
            {
                ("column", "lifecycle_events", "event_id", "uuid", "0", ""),
                ("nullable", "lifecycle_events", "event_id", "NO"),
                ("column", "lifecycle_events", "producer", "character varying", "50", ""),
                ("nullable", "lifecycle_events", "producer", "YES"),
                ("constraint", "lifecycle_events", "UNIQUE (event_id, created_at)"),
                # Who made each change, and ListEvents' filter on it (0004_event_actors.sql).
                ("column", "lifecycle_events", "actors", "ARRAY", "0", ""),
                ("nullable", "lifecycle_events", "actors", "YES"),
                (
                    "index",
                    "lifecycle_events",
                    "CREATE INDEX idx_lifecycle_events_actors ON lifecycle_events"
                    " USING gin (actors)",
                ),
                (
                    "index",
                    "lifecycle_events",
                    "CREATE INDEX idx_lifecycle_events_execution ON lifecycle_events USING btree"
                    " (workflow_execution_id, created_at DESC)"
                    " WHERE (workflow_execution_id IS NOT NULL)",
                ),
            },
        ),
    ),
}
ONLY_IN_DESIGN, ONLY_IN_OURS = _merge(*DEVIATIONS.values())


def design_sql() -> str:
    """The SQL blocks of the design that define the schema (not the partition example)."""
    blocks = re.findall(r"```sql\n(.*?)```", DESIGN.read_text(), re.S)
    return "\n".join(block for block in blocks if "PARTITION OF" not in block)


async def schema_facts(conn: asyncpg.Connection, schemas: list[str]) -> set[tuple[str, ...]]:
    """Columns, constraints, indexes and partitioning of the ten tables, without schema names."""
    tables = list(OWNERS)
    facts: set[tuple[str, ...]] = set()
    for row in await conn.fetch(
        "SELECT table_name, column_name, data_type,"
        " coalesce(character_maximum_length, 0) AS length,"
        " coalesce(column_default, '') AS default_value, is_nullable"
        " FROM information_schema.columns"
        " WHERE table_schema = ANY($1) AND table_name = ANY($2)",
        schemas,
        tables,
    ):
        default = re.sub(r"nextval\('[a-z_]+\.", "nextval('", row["default_value"])
        facts.add(
            (
                "column",
                row["table_name"],
                row["column_name"],
                row["data_type"],
                str(row["length"]),
                default,
            )
        )
        facts.add(("nullable", row["table_name"], row["column_name"], row["is_nullable"]))
    for row in await conn.fetch(
        "SELECT c.relname, pg_get_constraintdef(k.oid) AS definition FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY($1) AND c.relname = ANY($2) AND k.contype <> 'n'",
        schemas,
        tables,
    ):
        facts.add(("constraint", row["relname"], _unqualified(row["definition"], schemas)))
    for row in await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = ANY($1) AND tablename = ANY($2)"
        " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
        schemas,
        tables,
    ):
        definition = _unqualified(row["indexdef"], schemas).replace(" ON ONLY ", " ON ")
        facts.add(("index", row["tablename"], definition))
    for row in await conn.fetch(
        "SELECT c.relname, pg_get_partkeydef(c.oid) AS key FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY($1) AND c.relkind = 'p'",
        schemas,
    ):
        facts.add(("partitioned", row["relname"], row["key"]))
    return facts


def _unqualified(definition: str, schemas: list[str]) -> str:
    """Without schema names, nor the parentheses that PostgreSQL versions print differently."""
    for schema in schemas:
        definition = definition.replace(f"{schema}.", "")
    return re.sub(r"[()]", "", definition)


def normalized(facts: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {
        (*fact[:-1], _unqualified(fact[-1], [])) if fact[0] in ("constraint", "index") else fact
        for fact in facts
    }


@pytest.fixture(scope="module")
async def design_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    database = await create_database(server_url, f"lifecycle_design_{secrets.token_hex(4)}")
    try:
        yield database
    finally:
        await drop_database(server_url, database)


async def test_schema_matches_the_design_except_the_documented_deviations(
    admin: asyncpg.Connection, design_database: ScratchDatabase
) -> None:
    conn = await asyncpg.connect(design_database.admin_url)
    try:
        await conn.execute("CREATE SCHEMA design; SET search_path = design")
        await conn.execute(design_sql())
        design = await schema_facts(conn, ["design"])
    finally:
        await conn.close()
    ours = await schema_facts(admin, sorted(set(OWNERS.values())))
    assert len(design) > 100
    assert design - ours == normalized(ONLY_IN_DESIGN)
    assert ours - design == normalized(ONLY_IN_OURS)


async def test_each_table_lives_in_its_owners_schema_and_belongs_to_its_role(
    admin: asyncpg.Connection, database: ScratchDatabase
) -> None:
    rows = await admin.fetch(
        "SELECT c.relname, n.nspname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = ANY($1) AND c.relkind IN ('r', 'p')",
        list(OWNERS),
    )
    assert {r["relname"]: (r["nspname"], r["owner"]) for r in rows} == {
        table: (service, service_role(database.admin_url, service))
        for table, service in OWNERS.items()
    }


async def test_a_service_role_can_use_only_its_own_tables(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    for service in DEFINITIONS:
        role = service_role(database.admin_url, service)
        for table, owner in OWNERS.items():
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                allowed = await admin.fetchval(
                    "SELECT has_schema_privilege($1, $2, 'USAGE')"
                    " AND has_table_privilege($1, $3, $4)",
                    role,
                    owner,
                    f"{owner}.{table}",
                    privilege,
                )
                assert allowed == (owner == service), (role, table, privilege)


async def test_the_segments_role_cannot_update_users(database: ScratchDatabase) -> None:

    segments = await asyncpg.connect(
        with_user(database.admin_url, service_role(database.admin_url, "segments"))
    )
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await segments.execute("UPDATE users.users SET attributes = '{}'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await segments.fetch("SELECT id FROM users.users")
        assert await segments.fetchval("SELECT count(*) FROM segments.user_segments") >= 0
    finally:
        await segments.close()


async def test_migrations_are_idempotent_and_serialized(server_url: str) -> None:
    fresh = await create_database(server_url, f"lifecycle_migrate_{secrets.token_hex(4)}")
    try:
        owners = schema_owners(fresh.admin_url, env={})
        first, second = await asyncio.gather(
            migrate(fresh.admin_url, owners), migrate(fresh.admin_url, owners)
        )
        assert sorted([len(first), len(second)]) == [0, migration_count()]
        assert await migrate(fresh.admin_url, owners) == []
        conn = await asyncpg.connect(fresh.admin_url)
        try:
            await conn.execute(
                "UPDATE users.schema_migrations SET checksum = 'edited' WHERE component = 'users'"
            )
        finally:
            await conn.close()
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(fresh.admin_url, owners)
    finally:
        await drop_database(server_url, fresh)


def expected_partitions(spec: PartitionedTable, today: date) -> list[str]:
    start = period_start(today, spec.period)
    return [partition_name(spec, shift(start, spec.period, n)) for n in range(spec.ahead + 1)]


async def partitions_of(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = $1 AND p.relname = $2 ORDER BY c.relname",
        schema,
        table,
    )
    return [r["relname"] for r in rows]


async def test_partitions_exist_for_the_current_period_and_three_ahead_with_no_default(
    admin: asyncpg.Connection,
) -> None:
    today = date.today()
    for service in ("triggers", "metrics"):
        for spec in DEFINITIONS[service].partitioned_tables:
            assert spec.ahead >= 3
            assert set(expected_partitions(spec, today)) <= set(
                await partitions_of(admin, service, spec.table)
            )
            default = await admin.fetchval(
                "SELECT count(*) FROM pg_partitioned_table t JOIN pg_class c ON c.oid = t.partrelid"
                " WHERE c.relname = $1 AND t.partdefid <> 0",
                spec.table,
            )
            assert default == 0


async def test_a_row_outside_the_created_partitions_fails_loudly(admin: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await admin.execute(
            "INSERT INTO metrics.lifecycle_events (event_type, created_at)"
            " VALUES ('user.created', '1999-01-01')"
        )


async def test_partition_maintenance_is_idempotent_and_follows_the_clock(
    admin: asyncpg.Connection, database: ScratchDatabase
) -> None:
    role = quote_identifier(service_role(database.admin_url, "metrics"))
    await admin.execute(f"SET ROLE {role}; SET search_path = metrics")
    try:
        monthly, yearly = DEFINITIONS["metrics"].partitioned_tables
        today = date.today()
        assert await ensure_partitions(admin, monthly, today) == []
        later = shift(period_start(today, "month"), "month", 6)
        assert await ensure_partitions(admin, monthly, later) == expected_partitions(monthly, later)
        assert await ensure_partitions(admin, monthly, later) == []
        insert = (
            "INSERT INTO metrics_daily (metric_date, lifecycle_stage, metric_name, metric_value)"
            " VALUES ($1, 'Activation', 'entries', 1)"
        )
        await admin.execute(insert, date(today.year + yearly.ahead, 12, 31))
        with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
            await admin.execute(insert, date(today.year + yearly.ahead + 1, 1, 1))
    finally:
        await admin.execute("RESET ROLE; RESET search_path")


def test_database_url_helpers() -> None:
    assert (
        with_database("postgresql://a@h:5/x?sslmode=require", "y")
        == "postgresql://a@h:5/y?sslmode=require"
    )
