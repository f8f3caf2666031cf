"""Jobs: the work of service tasks, activated by workers under a lease,
retried after a backoff, failed into an incident."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.workflows.domain import SET_STAGE, UPDATE_ATTRIBUTES, JobRecord

# The built-in tasks' calls to the users service as `lifecycle outbox` shows them:
# waiting (retried with backoff), or out of retries (an incident each, which
# ResolveIncident retries). A job keeps no creation time, hence no oldest.
WAITING_USERS_CALLS = f"""
SELECT CASE state WHEN 'failed' THEN 'incident' ELSE 'pending' END AS kind,
       job_type AS topic, count(*) AS messages, NULL::timestamptz AS oldest,
       max(error_message) AS last_error
FROM jobs WHERE job_type IN ('{SET_STAGE}', '{UPDATE_ATTRIBUTES}')
GROUP BY 1, 2
"""

_JOB_FIELDS = (
    "execution_id",
    "token",
    "job_type",
    "element_id",
    "workflow_id",
    "user_id",
    "headers",
    "retries",
    "failures",
    "state",
    "available_at",
    "traceparent",
)
_JOB = ", ".join(f"j.{name}" for name in _JOB_FIELDS)


def _job(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        **{name: row[name] for name in _JOB_FIELDS},
        variables=row["variables"] or {},
        actors=tuple(row["actors"]),
    )


async def activate_jobs(
    conn: asyncpg.Connection,
    job_types: Sequence[str],
    worker: str,
    *,
    limit: int,
    now: datetime,
    deadline: datetime,
) -> list[JobRecord]:
    """Locks up to `limit` available jobs of these types to `worker` until `deadline`."""
    rows = await conn.fetch(
        "WITH due AS (SELECT execution_id, token FROM jobs"
        "  WHERE job_type = ANY($1::text[]) AND state <> 'failed' AND available_at <= $3"
        "  ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " UPDATE jobs j SET state = 'activated', available_at = $4, worker = $5"
        " FROM due JOIN workflow_executions e ON e.id = due.execution_id"
        " JOIN execution_tokens t ON t.execution_id = due.execution_id AND t.token = due.token"
        " WHERE j.execution_id = due.execution_id AND j.token = due.token"
        # The element's local variables (its inputs) over the execution's.
        f" RETURNING {_JOB}, e.variables || coalesce(t.variables, '{{}}') AS variables,"
        " e.actors",
        list(job_types),
        limit,
        now,
        deadline,
        worker,
    )
    return [_job(row) for row in rows]


async def get_job(
    conn: asyncpg.Connection, execution_id: uuid.UUID, token: int, *, lock: bool = False
) -> JobRecord | None:
    suffix = " FOR UPDATE OF j" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_JOB}, '{{}}'::jsonb AS variables, '{{}}'::text[] AS actors FROM jobs j"
        f" WHERE j.execution_id = $1 AND j.token = $2{suffix}",
        execution_id,
        token,
    )
    return _job(row) if row else None


async def retry_job(
    conn: asyncpg.Connection,
    execution_id: uuid.UUID,
    token: int,
    *,
    retries: int,
    available_at: datetime,
    error: str,
) -> None:
    await conn.execute(
        "UPDATE jobs SET state = 'ready', retries = $3, failures = failures + 1,"
        " available_at = $4, error_message = $5, worker = NULL"
        " WHERE execution_id = $1 AND token = $2",
        execution_id,
        token,
        retries,
        available_at,
        error,
    )


async def fail_job(
    conn: asyncpg.Connection, execution_id: uuid.UUID, token: int, error: str, now: datetime
) -> None:
    """Retries ran out (or the error was not caught): the job waits for ResolveIncident."""
    await conn.execute(
        "UPDATE jobs SET state = 'failed', retries = 0, failures = failures + 1,"
        " error_message = $3, worker = NULL WHERE execution_id = $1 AND token = $2",
        execution_id,
        token,
        error,
    )
    element = await conn.fetchval(
        "SELECT element_id FROM jobs WHERE execution_id = $1 AND token = $2", execution_id, token
    )
    await conn.execute(
        "INSERT INTO incidents (execution_id, token, element_id, from_job, error_message,"
        " created_at) VALUES ($1, $2, $3, true, $4, $5)",
        execution_id,
        token,
        element,
        error,
        now,
    )
