"""Incidents: where an execution waits for someone to resolve a problem."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.workflows.domain import IncidentRecord

INCIDENT_COLUMNS = (
    "id, execution_id, token, element_id, from_job, error_message, created_at, resolved_at"
)


async def get_incident(conn: asyncpg.Connection, incident_id: uuid.UUID) -> IncidentRecord | None:
    row = await conn.fetchrow(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1", incident_id
    )
    return IncidentRecord(*row) if row else None


async def resolve_incident(
    conn: asyncpg.Connection, incident: IncidentRecord, retries: int, now: datetime
) -> None:
    """Marks it resolved; a job's incident makes the job ready again with `retries`."""
    await conn.execute("UPDATE incidents SET resolved_at = $2 WHERE id = $1", incident.id, now)
    if incident.from_job:
        await conn.execute(
            "UPDATE jobs SET state = 'ready', retries = $3, available_at = $4"
            " WHERE execution_id = $1 AND token = $2",
            incident.execution_id,
            incident.token,
            retries,
            now,
        )
