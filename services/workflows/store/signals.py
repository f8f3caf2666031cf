"""Signals: the subscriptions of tokens waiting for one (written with their
step, gone with their token), the workflows a signal starts, and the workflows
a call activity names by BPMN process id."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from runtime.database import Executor
from services.workflows.store.definitions import WorkflowVersion
from services.workflows.store.statement import Statement


class NewSignalSubscription(NamedTuple):
    execution_id: uuid.UUID
    token: int
    element_id: str
    signal_name: str
    # The step's time: since when the token waits.
    created_at: datetime


class SignalSubscriber(NamedTuple):
    """A token waiting for a signal, at its catch or boundary element."""

    execution_id: uuid.UUID
    token: int
    element_id: str
    name: str


def add_writes(q: Statement, rows: Sequence[NewSignalSubscription]) -> None:
    """The step's new signal subscriptions, in the step's statement."""
    if rows:
        columns = ", ".join(NewSignalSubscription._fields)
        q.add(
            "signal_subscriptions",
            f"INSERT INTO signal_subscriptions ({columns}) SELECT r.*"
            f" FROM {q.unnest(rows, ('uuid', 'int', 'text', 'text', 'timestamptz'))}"
            f" AS r({columns})"
            " ON CONFLICT DO NOTHING",
        )


async def subscribers(
    conn: Executor, names: Iterable[str], users: Sequence[uuid.UUID] | None = None
) -> list[SignalSubscriber]:
    """Every token waiting for a signal of these names (of the executions of
    `users` only, when given), in execution order."""
    rows = await conn.fetch(
        "SELECT execution_id, token, element_id, signal_name FROM signal_subscriptions"
        " WHERE signal_name = ANY($1::text[]) AND ($2::uuid[] IS NULL OR execution_id IN"
        "   (SELECT id FROM workflow_executions WHERE user_id = ANY($2::uuid[])))"
        " ORDER BY execution_id, token, element_id",
        list(set(names)),
        None if users is None else list(users),
    )
    return [
        SignalSubscriber(r["execution_id"], r["token"], r["element_id"], r["signal_name"])
        for r in rows
    ]


async def signal_start_workflows(
    conn: Executor, names: Iterable[str]
) -> dict[str, list[WorkflowVersion]]:
    """The active workflows (at their current version) a signal of each name starts."""
    rows = await conn.fetch(
        "SELECT v.start_signal, w.id, w.version FROM workflows w JOIN workflow_versions v"
        " ON v.workflow_id = w.id AND v.version = w.version"
        " WHERE w.status = 'active' AND v.start_signal = ANY($1::text[]) ORDER BY w.id",
        list(set(names)),
    )
    found: dict[str, list[WorkflowVersion]] = defaultdict(list)
    for row in rows:
        found[row["start_signal"]].append(WorkflowVersion(row["id"], row["version"]))
    return found


async def workflows_by_process(
    conn: Executor, process_ids: Iterable[str]
) -> dict[str, list[uuid.UUID]]:
    """The active workflows whose current version's executable process has each id."""
    rows = await conn.fetch(
        "SELECT v.definition ->> 'process_id' AS process_id, w.id FROM workflows w"
        " JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.version"
        " WHERE w.status = 'active' AND v.definition ->> 'process_id' = ANY($1::text[])"
        " ORDER BY w.id",
        list(set(process_ids)),
    )
    found: dict[str, list[uuid.UUID]] = defaultdict(list)
    for row in rows:
        found[row["process_id"]].append(row["id"])
    return found
