"""Workflows and their versions: the definitions executions run on."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from runtime.database import Executor
from services.workflows.domain import VersionRow, WorkflowRecord


class WorkflowVersion(NamedTuple):
    """A version of a workflow: what an execution runs on."""

    workflow_id: uuid.UUID
    version: str


class VersionListed(NamedTuple):
    version: str
    created_at: datetime


class WorkflowState(NamedTuple):
    """A workflow's status and current version: whether and on what it starts."""

    status: str
    version: str


_WORKFLOW = (
    "w.id, w.name, coalesce(w.description, '') AS description, w.bpmn_xml, w.version,"
    " coalesce(w.lifecycle_stages, '{}') AS lifecycle_stages, w.status, w.created_by,"
    " w.created_at, w.updated_at"
)


def _workflow(row: asyncpg.Record) -> WorkflowRecord:
    return WorkflowRecord(
        row["id"],
        row["name"],
        row["description"],
        row["bpmn_xml"],
        row["version"],
        list(row["lifecycle_stages"]),
        row["status"],
        row["created_by"],
        row["created_at"],
        row["updated_at"],
    )


async def insert_workflow(
    conn: asyncpg.Connection,
    name: str,
    description: str,
    stages: list[str],
    *,
    created_by: uuid.UUID | None,
    version: VersionRow,
) -> WorkflowRecord:
    row = await conn.fetchrow(
        "INSERT INTO workflows AS w (name, description, bpmn_xml, lifecycle_stages, created_by)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_WORKFLOW}",
        name,
        description,
        version.bpmn_xml,
        stages,
        created_by,
    )
    assert row is not None
    workflow = _workflow(row)
    await save_version(conn, workflow.id, workflow.version, version)
    return workflow


async def save_version(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, version: str, row: VersionRow
) -> None:
    await conn.execute(
        "INSERT INTO workflow_versions"
        " (workflow_id, version, bpmn_xml, definition, checksum, start_message)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workflow_id, version) DO UPDATE"
        " SET bpmn_xml = $3, definition = $4, checksum = $5, start_message = $6",
        workflow_id,
        version,
        row.bpmn_xml,
        row.definition,
        row.checksum,
        row.start_message,
    )


async def get_workflow(
    conn: Executor, workflow_id: uuid.UUID, *, lock: bool = False
) -> WorkflowRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_WORKFLOW} FROM workflows w WHERE id = $1{suffix}", workflow_id
    )
    return _workflow(row) if row else None


async def get_workflow_version(
    conn: Executor, workflow_id: uuid.UUID, version: str
) -> WorkflowRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_WORKFLOW.replace('w.bpmn_xml', 'v.bpmn_xml').replace('w.version', 'v.version')}"
        " FROM workflows w JOIN workflow_versions v ON v.workflow_id = w.id"
        " WHERE w.id = $1 AND v.version = $2",
        workflow_id,
        version,
    )
    return _workflow(row) if row else None


async def list_versions(
    conn: Executor, workflow_id: uuid.UUID, cursor: tuple[datetime, str] | None, limit: int
) -> list[VersionListed]:
    """A workflow's versions, the newest first, after the cursor."""
    rows = await conn.fetch(
        "SELECT version, created_at FROM workflow_versions WHERE workflow_id = $1"
        "   AND ($2::timestamptz IS NULL OR (created_at, version) < ($2, $3::text))"
        " ORDER BY created_at DESC, version DESC LIMIT $4",
        workflow_id,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [VersionListed(row["version"], row["created_at"]) for row in rows]


async def version_checksum(conn: Executor, workflow_id: uuid.UUID, version: str) -> bytes | None:
    checksum: bytes | None = await conn.fetchval(
        "SELECT checksum FROM workflow_versions WHERE workflow_id = $1 AND version = $2",
        workflow_id,
        version,
    )
    return checksum


async def list_workflows(
    conn: Executor,
    statuses: list[str],
    stages: list[str],
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[WorkflowRecord]:
    rows = await conn.fetch(
        f"SELECT {_WORKFLOW} FROM workflows w"
        " WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))"
        "   AND (cardinality($2::text[]) = 0 OR lifecycle_stages && $2::varchar[])"
        "   AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))"
        " ORDER BY created_at, id LIMIT $5",
        statuses,
        stages,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_workflow(row) for row in rows]


async def update_workflow(
    conn: asyncpg.Connection,
    workflow_id: uuid.UUID,
    *,
    name: str,
    description: str,
    stages: list[str],
    bpmn_xml: str,
    version: str,
) -> WorkflowRecord:
    row = await conn.fetchrow(
        "UPDATE workflows w SET name = $2, description = $3, lifecycle_stages = $4,"
        f" bpmn_xml = $5, version = $6 WHERE id = $1 RETURNING {_WORKFLOW}",
        workflow_id,
        name,
        description,
        stages,
        bpmn_xml,
        version,
    )
    assert row is not None
    return _workflow(row)


async def set_status(
    conn: asyncpg.Connection, workflow_id: uuid.UUID, status: str
) -> WorkflowRecord:
    row = await conn.fetchrow(
        f"UPDATE workflows w SET status = $2 WHERE id = $1 RETURNING {_WORKFLOW}",
        workflow_id,
        status,
    )
    assert row is not None
    return _workflow(row)


async def delete_workflow(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM workflow_executions WHERE workflow_id = $1", workflow_id)
    await conn.execute("DELETE FROM workflows WHERE id = $1", workflow_id)


async def load_definitions(
    conn: Executor, keys: Sequence[WorkflowVersion]
) -> dict[WorkflowVersion, dict[str, Any]]:
    """The stored graphs (JSON) of these versions."""
    rows = await conn.fetch(
        "SELECT v.workflow_id, v.version, v.definition FROM workflow_versions v"
        " JOIN unnest($1::uuid[], $2::text[]) AS k(id, version)"
        " ON v.workflow_id = k.id AND v.version = k.version",
        [key.workflow_id for key in keys],
        [key.version for key in keys],
    )
    return {WorkflowVersion(row["workflow_id"], row["version"]): row["definition"] for row in rows}


async def startable(
    conn: Executor, workflow_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, WorkflowState]:
    """The status and current version of each workflow that exists."""
    rows = await conn.fetch(
        "SELECT id, status, version FROM workflows WHERE id = ANY($1::uuid[])", list(workflow_ids)
    )
    return {row["id"]: WorkflowState(row["status"], row["version"]) for row in rows}


async def message_start_workflows(
    conn: Executor, names: Iterable[str]
) -> dict[str, list[WorkflowVersion]]:
    """The active workflows (at their current version) that a message of each name starts."""
    rows = await conn.fetch(
        "SELECT v.start_message, w.id, w.version FROM workflows w JOIN workflow_versions v"
        " ON v.workflow_id = w.id AND v.version = w.version"
        " WHERE w.status = 'active' AND v.start_message = ANY($1::text[]) ORDER BY w.id",
        list(names),
    )
    found: dict[str, list[WorkflowVersion]] = defaultdict(list)
    for row in rows:
        found[row["start_message"]].append(WorkflowVersion(row["id"], row["version"]))
    return found
