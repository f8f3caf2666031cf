"""Compensation records (migration 0008, compensation_log.py): written with
their execution's step, in its statement; deleted when the execution ends."""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.workflows.domain import ENDED_STATUSES
from services.workflows.state import ExecutionState
from services.workflows.store.statement import Statement

# Loaded with the execution (store/executions.py), in completion order.
LOAD = (
    "(SELECT coalesce(json_agg(json_build_array(c.seq, c.element_id, c.scopes,"
    " c.completed_at, c.thrower) ORDER BY c.seq), '[]') FROM compensations c"
    " WHERE c.execution_id = e.id) AS compensations"
)
# The scopes go as JSON text: asyncpg would take a list in an array for a dimension.
_TYPES = ("uuid", "int", "text", "text", "timestamptz", "int")


def add_writes(q: Statement, states: Sequence[ExecutionState]) -> None:
    """The records the steps of `states` added, claimed and dropped; all of an
    ended execution's go (one statement touches each row once)."""
    ended, rows, dropped = [], [], []
    for state in states:
        log = state.compensations
        if state.status in ENDED_STATUSES:
            if log.records or log.dropped:
                ended.append(state.id)
            continue
        rows += [
            (state.id, r.seq, r.element, json.dumps(r.scopes), r.completed_at, r.thrower)
            for r in log.to_write()
        ]
        dropped += [(state.id, seq) for seq in log.dropped]
    if ended:
        q.add(
            "compensations_ended",
            f"DELETE FROM compensations WHERE execution_id = ANY({q.arg(ended, 'uuid[]')})",
        )
    if rows:
        q.add(
            "compensations",
            "INSERT INTO compensations (execution_id, seq, element_id, scopes, completed_at,"
            " thrower) SELECT r.id, r.seq, r.element, r.scopes::jsonb, r.at, r.thrower"
            f" FROM {q.unnest(rows, _TYPES)} AS r(id, seq, element, scopes, at, thrower)"
            " ON CONFLICT (execution_id, seq) DO UPDATE SET thrower = excluded.thrower",
        )
    if dropped:
        q.add(
            "compensations_dropped",
            f"DELETE FROM compensations c USING {q.unnest(dropped, ('uuid', 'int'))}"
            " AS d(id, seq) WHERE c.execution_id = d.id AND c.seq = d.seq",
        )
