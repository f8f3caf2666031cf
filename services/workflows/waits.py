"""What an execution waits on now (ListExecutionWaits): the stored waits of a
page, read in one snapshot, each event wait placed in its workflow (a boundary
event, an event sub-process's start, ...) by the version's graph."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from runtime.database import connection
from services.workflows.domain import execution_not_found
from services.workflows.graph import Graph
from services.workflows.stepper import Stepper
from services.workflows.store import waits as store
from services.workflows.store.waits import WaitCursor, WaitRow

INTERMEDIATE = "intermediate"
BOUNDARY = "boundary"
EVENT_SUBPROCESS = "event_subprocess"
RECEIVE_TASK = "receive_task"
START = "start"


@dataclass(frozen=True)
class EventPlace:
    """Where the event a timer or subscription waits for sits in the workflow."""

    kind: str
    # Its firing ends the activity it is attached to, or the other work of its scope.
    interrupting: bool


@dataclass(frozen=True)
class Wait:
    row: WaitRow
    # Timers and subscriptions only.
    place: EventPlace | None


def event_place(graph: Graph, element_id: str) -> EventPlace:
    node = graph.nodes[element_id]
    if node.type == "boundaryEvent":
        return EventPlace(BOUNDARY, node.interrupting)
    if node.type == "startEvent":
        container = graph.nodes.get(node.scope or "")
        if container is not None and container.triggered:
            return EventPlace(EVENT_SUBPROCESS, node.interrupting)
        return EventPlace(START, False)
    if node.type == "receiveTask":
        return EventPlace(RECEIVE_TASK, False)
    return EventPlace(INTERMEDIATE, False)


class ExecutionWaits:
    def __init__(self, stepper: Stepper) -> None:
        self._stepper = stepper

    async def page(
        self, execution_id: uuid.UUID, after: WaitCursor | None, limit: int
    ) -> list[Wait]:
        """Up to `limit` waits after the cursor; NOT_FOUND for an unknown execution.
        One snapshot, so that a wait that moves on meanwhile is seen once."""
        async with (
            connection(self._stepper.context.pool) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            version = await store.execution_version(conn, execution_id)
            if version is None:
                raise execution_not_found(execution_id)
            rows = await store.waits(conn, execution_id, after, limit)
            graph = (await self._stepper.graphs(conn, [version]))[version]
        return [
            Wait(row, event_place(graph, row.element_id) if row.kind in store.EVENT_KINDS else None)
            for row in rows
        ]
