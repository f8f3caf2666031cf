"""The triggers service's SQL. Every function runs on the connection it is given,
inside the caller's transaction where one is open; batches are set-based
(unnest arrays), one statement each."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from conditions import PersonEvent
from runtime import tombstones
from runtime.chains import Chain, as_json, stored
from runtime.database import Executor
from runtime.structs import DECIMAL_JSON
from services.triggers.domain import (
    REENTRY_LIMIT,
    Action,
    PendingStart,
    Reentry,
    Settled,
    SignalOutcome,
    Trigger,
    TriggerExecution,
    TriggerFields,
    TriggerFilter,
)

# Advisory lock key ("lt" + "e"): ingest (shared) and erase (exclusive) exclude
# each other, so that no event of an erased user is stored after the erase.
ERASE_LOCK = 0x6C74_0065

_TRIGGER_COLUMNS = (
    "id, name, event_type, conditions, workflow_id, signal_name, enabled, reentry_mode,"
    " reentry_period, created_at, updated_at"
)


def _trigger(row: asyncpg.Record) -> Trigger:
    return Trigger(
        id=row["id"],
        name=row["name"],
        event_type=row["event_type"],
        conditions=row["conditions"],
        action=Action(row["workflow_id"], row["signal_name"]),
        enabled=row["enabled"],
        reentry=Reentry(row["reentry_mode"], row["reentry_period"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_trigger(conn: asyncpg.Connection, fields: TriggerFields) -> Trigger:
    assert fields.reentry is not None and fields.action is not None
    row = await conn.fetchrow(
        "INSERT INTO triggers (name, event_type, conditions, workflow_id, signal_name, enabled,"
        " reentry_mode, reentry_period)"
        f" VALUES ($1, $2, $3, $4, $5, true, $6, $7) RETURNING {_TRIGGER_COLUMNS}",
        fields.name,
        fields.event_type,
        fields.conditions,
        fields.action.workflow_id,
        fields.action.signal_name,
        fields.reentry.mode,
        fields.reentry.period,
    )
    assert row is not None
    return _trigger(row)


async def get_trigger(conn: Executor, trigger_id: uuid.UUID) -> Trigger | None:
    row = await conn.fetchrow(f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE id = $1", trigger_id)
    return _trigger(row) if row else None


async def list_triggers(
    conn: Executor,
    where: TriggerFilter,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Trigger]:
    rows = await conn.fetch(
        f"SELECT {_TRIGGER_COLUMNS} FROM triggers"
        " WHERE ($1::text IS NULL OR event_type = $1)"
        "   AND ($2::uuid IS NULL OR workflow_id = $2)"
        "   AND ($3::boolean IS NULL OR enabled = $3)"
        "   AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))"
        " ORDER BY created_at, id LIMIT $6",
        where.event_type,
        where.workflow_id,
        where.enabled,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        limit,
    )
    return [_trigger(row) for row in rows]


async def update_trigger(
    conn: asyncpg.Connection, trigger_id: uuid.UUID, fields: TriggerFields
) -> Trigger | None:
    reentry, action = fields.reentry, fields.action
    # A new action replaces the old one whole: the one of the two it sets, the other cleared.
    row = await conn.fetchrow(
        "UPDATE triggers SET name = coalesce($2, name), event_type = coalesce($3, event_type),"
        " conditions = coalesce($4, conditions),"
        " workflow_id = CASE WHEN $8 THEN $5 ELSE workflow_id END,"
        " signal_name = CASE WHEN $8 THEN $9 ELSE signal_name END,"
        " reentry_mode = coalesce($6, reentry_mode),"
        " reentry_period = CASE WHEN $6::text IS NULL THEN reentry_period ELSE $7 END"
        f" WHERE id = $1 RETURNING {_TRIGGER_COLUMNS}",
        trigger_id,
        fields.name,
        fields.event_type,
        fields.conditions,
        action.workflow_id if action else None,
        reentry.mode if reentry else None,
        reentry.period if reentry else None,
        action is not None,
        action.signal_name if action else None,
    )
    return _trigger(row) if row else None


async def set_enabled(
    conn: asyncpg.Connection, trigger_id: uuid.UUID, enabled: bool
) -> Trigger | None:
    """The trigger with `enabled` set; a trigger that has it already is not written."""
    row = await conn.fetchrow(
        f"WITH changed AS (UPDATE triggers SET enabled = $2 WHERE id = $1 AND enabled IS"
        f" DISTINCT FROM $2 RETURNING {_TRIGGER_COLUMNS})"
        f" SELECT * FROM changed UNION ALL"
        f" SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE id = $1 AND enabled = $2",
        trigger_id,
        enabled,
    )
    return _trigger(row) if row else None


async def delete_trigger(conn: asyncpg.Connection, trigger_id: uuid.UUID) -> bool:
    """Deletes the trigger with its executions (its entries and waiting starts go
    by ON DELETE CASCADE). False when it does not exist."""
    await conn.execute("DELETE FROM trigger_executions WHERE trigger_id = $1", trigger_id)
    result = await conn.execute("DELETE FROM triggers WHERE id = $1", trigger_id)
    return result != "DELETE 0"


async def enabled_triggers(conn: Executor) -> tuple[int, list[Trigger]]:
    """The catalog version and the enabled triggers, from one snapshot."""
    rows = await conn.fetch(
        f"SELECT c.version, {', '.join(f't.{c}' for c in _TRIGGER_COLUMNS.split(', '))}"
        " FROM trigger_catalog c LEFT JOIN triggers t ON t.enabled"
    )
    return rows[0]["version"], [_trigger(row) for row in rows if row["id"] is not None]


# ------------------------------------------------------------------ ingest


@dataclass
class EventRows:
    """The events of a batch as columns."""

    message_ids: list[str]
    user_ids: list[uuid.UUID]
    event_types: list[str]
    data: list[str]
    event_times: list[datetime]


@dataclass
class EvaluationRows:
    """One row per (event, matching trigger) as columns."""

    message_ids: list[str]
    trigger_ids: list[uuid.UUID]
    ids: list[str]
    met: list[bool]
    # Whether the firing claims the user's entry (a limited re-entry policy).
    claims: list[bool]
    # A reason decided before the statement (a repeat within the batch).
    skips: list[str | None]
    # The StartExecution (or BroadcastSignal) request when the trigger fires.
    requests: list[bytes | None]
    # The signal a firing broadcasts (None: it starts a workflow).
    signals: list[str | None]
    traceparents: list[str | None]
    # Whom the starts are made for: the actors of the event's call.
    actors: list[Chain]


@dataclass(frozen=True)
class Recorded:
    accepted: set[str]
    erased: set[uuid.UUID]
    starts: int


_RECORD = f"""
WITH erased AS (
  SELECT user_id FROM erased_users WHERE user_id = ANY($2::uuid[])
), accepted AS (
  INSERT INTO events (message_id, user_id, event_type, data, event_time, received_at)
  SELECT e.m, e.u, e.t, e.d::jsonb, e.at, $6
  FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
    AS e(m, u, t, d, at)
  WHERE e.u NOT IN (SELECT user_id FROM erased)
  ORDER BY e.m
  ON CONFLICT (message_id) DO NOTHING
  RETURNING message_id, user_id, event_type, data
), present AS (
  SELECT id FROM triggers WHERE id = ANY($8::uuid[]) FOR KEY SHARE
), evaluated AS (
  SELECT v.*, a.user_id, a.event_type, a.data
  FROM unnest($7::text[], $8::uuid[], $9::uuid[], $10::boolean[], $11::boolean[],
              $12::text[], $13::bytea[], $14::text[], $15::text[], $16::text[])
    AS v(message_id, trigger_id, id, met, claim, skip, request, traceparent, actors, signal)
  JOIN accepted a USING (message_id)
  WHERE v.trigger_id IN (SELECT id FROM present)
), admitted AS (
  INSERT INTO trigger_entries AS entry (trigger_id, user_id, fired_at)
  SELECT trigger_id, user_id, $6 FROM evaluated WHERE claim
  ORDER BY trigger_id, user_id
  ON CONFLICT (trigger_id, user_id) DO UPDATE SET fired_at = EXCLUDED.fired_at
  WHERE entry.fired_at
    + (SELECT t.reentry_period FROM triggers t WHERE t.id = entry.trigger_id)
    <= EXCLUDED.fired_at
  RETURNING trigger_id, user_id
), recorded AS (
  INSERT INTO trigger_executions (id, trigger_id, user_id, event_data, condition_met,
                                  executed_at, event_type, message_id, skip_reason)
  SELECT v.id, v.trigger_id, v.user_id, v.data, v.met, $6, v.event_type, v.message_id,
         coalesce(v.skip, CASE WHEN v.claim AND a.trigger_id IS NULL THEN '{REENTRY_LIMIT}' END)
  FROM evaluated v
  LEFT JOIN admitted a ON v.claim AND a.trigger_id = v.trigger_id AND a.user_id = v.user_id
  RETURNING id, condition_met, skip_reason
), started AS (
  INSERT INTO pending_starts (trigger_execution_id, executed_at, trigger_id, user_id,
                              event_type, request, traceparent, actors, signal_name)
  SELECT v.id, $6, v.trigger_id, v.user_id, v.event_type, v.request, v.traceparent,
         {stored("v.actors::jsonb")}, v.signal
  FROM recorded r JOIN evaluated v ON v.id = r.id
  WHERE r.condition_met AND r.skip_reason IS NULL
  RETURNING 1
)
SELECT array(SELECT message_id FROM accepted) AS accepted,
       array(SELECT user_id FROM erased) AS erased,
       (SELECT count(*) FROM started) AS starts
"""


async def person_events(
    conn: asyncpg.Connection, user_ids: Sequence[uuid.UUID], types: Sequence[str], since: datetime
) -> dict[uuid.UUID, list[tuple[str, PersonEvent]]]:
    """The stored events of these users of these types (exact, or a family
    ending in "*") that happened since `since`: (message_id, event), oldest first."""
    exact = [kind for kind in types if not kind.endswith("*")]
    prefixes = [kind[:-1] for kind in types if kind.endswith("*")]
    rows = await conn.fetch(
        "SELECT user_id, message_id, event_type, event_time, data::text AS data FROM events"
        " WHERE user_id = ANY($1::uuid[]) AND event_time >= $2"
        " AND (event_type = ANY($3::text[])"
        "      OR EXISTS (SELECT 1 FROM unnest($4::text[]) p WHERE starts_with(event_type, p)))"
        " ORDER BY event_time, id",
        user_ids,
        since,
        exact,
        prefixes,
    )
    found: dict[uuid.UUID, list[tuple[str, PersonEvent]]] = {}
    for row in rows:
        event = PersonEvent(row["event_type"], row["event_time"], DECIMAL_JSON.decode(row["data"]))
        found.setdefault(row["user_id"], []).append((row["message_id"], event))
    return found


async def lock_for_ingest(conn: asyncpg.Connection) -> int:
    """Taken first in an ingest transaction: an erase waits for it, and the
    statements after it see every erase that committed before. Returns the
    trigger catalog's version."""
    version: int = await conn.fetchval(
        "SELECT (SELECT version FROM trigger_catalog) FROM pg_advisory_xact_lock_shared($1)",
        ERASE_LOCK,
    )
    return version


async def record(
    conn: asyncpg.Connection, events: EventRows, evaluations: EvaluationRows, now: datetime
) -> Recorded:
    """Stores the batch in one statement: the events new by message_id (not those
    of erased users), each evaluation of a new event (the re-entry policy claimed
    set-based: a concurrent firing of the same user waits on the entry's row and
    sees it), and the starts the firings ask for. Evaluations of triggers deleted
    meanwhile are left out."""
    row = await conn.fetchrow(
        _RECORD,
        events.message_ids,
        events.user_ids,
        events.event_types,
        events.data,
        events.event_times,
        now,
        evaluations.message_ids,
        evaluations.trigger_ids,
        evaluations.ids,
        evaluations.met,
        evaluations.claims,
        evaluations.skips,
        evaluations.requests,
        evaluations.traceparents,
        as_json(evaluations.actors),
        evaluations.signals,
    )
    assert row is not None
    return Recorded(set(row["accepted"]), set(row["erased"]), row["starts"])


# ------------------------------------------------------------------ starts


# The starts and broadcasts as `lifecycle outbox` shows them: calls waiting for
# the workflows service.
WAITING_STARTS = """
SELECT 'pending' AS kind,
       CASE WHEN signal_name IS NULL THEN 'workflows.start_execution'
            ELSE 'workflows.broadcast_signal' END AS topic,
       count(*) AS messages, min(executed_at) AS oldest, max(last_error) AS last_error
FROM pending_starts GROUP BY 2
"""

_CLAIM_STARTS = """
WITH due AS (
  SELECT trigger_execution_id FROM pending_starts WHERE available_at <= now()
  ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE pending_starts p SET available_at = now() + make_interval(secs => $2),
                            attempts = p.attempts + 1
FROM due WHERE p.trigger_execution_id = due.trigger_execution_id
RETURNING p.trigger_execution_id, p.executed_at, p.trigger_id, p.user_id, p.event_type,
          p.request, p.traceparent, p.attempts, p.actors, p.signal_name
"""


async def claim_starts(conn: Executor, limit: int, lease_seconds: float) -> list[PendingStart]:
    """Due starts, leased: another replica skips them until the lease ends."""
    rows = await conn.fetch(_CLAIM_STARTS, limit, lease_seconds)
    return [PendingStart(**{**dict(row), "actors": tuple(row["actors"])}) for row in rows]


async def settle_starts(conn: asyncpg.Connection, settled: Sequence[Settled]) -> None:
    """Writes the answers into the trigger executions and forgets the starts."""
    signals = [s.signal for s in settled]
    await conn.execute(
        "UPDATE trigger_executions t SET workflow_execution_id = s.execution_id,"
        " skip_reason = s.skip_reason, signal_name = s.signal_name,"
        " signal_delivered = s.delivered, signal_started = s.started"
        " FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[],"
        "             $6::int[], $7::int[])"
        "   AS s(id, executed_at, execution_id, skip_reason, signal_name, delivered, started)"
        " WHERE t.id = s.id AND t.executed_at = s.executed_at",
        [s.start.trigger_execution_id for s in settled],
        [s.start.executed_at for s in settled],
        [s.workflow_execution_id for s in settled],
        [s.skip_reason for s in settled],
        [signal.name if signal else None for signal in signals],
        [signal.delivered if signal else None for signal in signals],
        [signal.started if signal else None for signal in signals],
    )
    await conn.execute(
        "DELETE FROM pending_starts WHERE trigger_execution_id = ANY($1::uuid[])",
        [s.start.trigger_execution_id for s in settled],
    )


async def reschedule_starts(
    conn: Executor, ids: Sequence[uuid.UUID], delays: Sequence[float], errors: Sequence[str]
) -> None:
    await conn.execute(
        "UPDATE pending_starts p SET available_at = now() + make_interval(secs => s.delay),"
        " last_error = s.error"
        " FROM unnest($1::uuid[], $2::float8[], $3::text[]) AS s(id, delay, error)"
        " WHERE p.trigger_execution_id = s.id",
        list(ids),
        list(delays),
        list(errors),
    )


# ------------------------------------------------------------------ executions


async def list_executions(
    conn: Executor,
    trigger_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[TriggerExecution]:
    """Newest first. Only the filters given are in the SQL, so each uses its index."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (("trigger_id", trigger_id), ("user_id", user_id)):
        if value is not None:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if cursor is not None:
        params += list(cursor)
        where.append(f"(executed_at, id) < (${len(params) - 1}, ${len(params)})")
    params.append(limit)
    rows = await conn.fetch(
        "SELECT id, trigger_id, user_id, event_data, condition_met, workflow_execution_id,"
        " executed_at, skip_reason, event_type, message_id, signal_name, signal_delivered,"
        " signal_started FROM trigger_executions"
        f" WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY executed_at DESC, id DESC LIMIT ${len(params)}",
        *params,
    )
    return [_execution(row) for row in rows]


def _execution(row: asyncpg.Record) -> TriggerExecution:
    fields = dict(row)
    name, delivered, started = (
        fields.pop(column) for column in ("signal_name", "signal_delivered", "signal_started")
    )
    signal = SignalOutcome(name, delivered, started) if name is not None else None
    return TriggerExecution(**fields, signal=signal)


# ------------------------------------------------------------------ erase and retention


async def erase_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Keeps the tombstone and removes what is held of the user, after the
    ingests in flight committed; returns the executions and events removed."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({ERASE_LOCK})")
    await tombstones.bury(conn, user_id)
    await conn.execute("DELETE FROM pending_starts WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM trigger_entries WHERE user_id = $1", user_id)
    executions = await conn.execute("DELETE FROM trigger_executions WHERE user_id = $1", user_id)
    events = await conn.execute("DELETE FROM events WHERE user_id = $1", user_id)
    return int(executions.split()[-1]) + int(events.split()[-1])


_MONTHLY_PARTITION = re.compile(r"trigger_executions_(\d{4})_(\d{2})")


async def execution_partitions(conn: asyncpg.Connection) -> dict[str, date]:
    """The monthly partitions of trigger_executions and the first day after each."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'trigger_executions'::regclass"
    )
    ends = {}
    for row in rows:
        match = _MONTHLY_PARTITION.fullmatch(row["relname"])
        if match:
            year, month = int(match[1]), int(match[2])
            ends[row["relname"]] = date(year + month // 12, month % 12 + 1, 1)
    return ends


async def drop_partition(conn: asyncpg.Connection, name: str, lock_timeout_ms: int) -> None:
    """Drops a partition without waiting in the lock queue in front of ingest."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout_ms}ms'")
        await conn.execute(f'DROP TABLE "{name}"')


async def delete_events_before(conn: asyncpg.Connection, cutoff: datetime, batch: int) -> int:
    """Deletes the oldest events, received before `cutoff`, at most `batch` of them,
    walking the primary key (ids grow with time): no scan of the recent ones."""
    result = await conn.execute(
        "WITH oldest AS (SELECT id, received_at FROM events ORDER BY id LIMIT $2)"
        " DELETE FROM events e USING oldest o WHERE e.id = o.id AND o.received_at < $1",
        cutoff,
        batch,
    )
    return int(result.split()[-1])


async def forget_entries(conn: asyncpg.Connection, now: datetime) -> int:
    """Entries of once-per-period triggers whose period is over block nothing."""
    result = await conn.execute(
        "DELETE FROM trigger_entries e USING triggers t WHERE t.id = e.trigger_id"
        " AND t.reentry_mode = 'once_per_period' AND e.fired_at + t.reentry_period <= $1",
        now,
    )
    return int(result.split()[-1])
