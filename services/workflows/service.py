"""How the runtime builds and runs the workflows service."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.lifecycle_events import DESTINATIONS, RECORD_EVENTS
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition, Worker
from services.workflows import store
from services.workflows.clock import Clock, SystemClock
from services.workflows.handlers import Catalog, Engine, Executions, users_profile_reader
from services.workflows.servicer import WorkflowServicer
from services.workflows.workers import BuiltinJobWorker, TimerWorker

RETENTION = timedelta(days=365)
RETENTION_BATCH = 1000


def _setting(name: str, default: float, *, integer: bool = False) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name}={raw!r} is not a positive {'integer' if integer else 'number'}")
    return value


def build_with(
    clock: Clock,
) -> Callable[[ServiceContext], Coroutine[Any, Any, ServiceComponents]]:
    """The service's build function on a clock (tests pass one they move by days)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        max_bpmn = int(_setting("LIFECYCLE_WORKFLOWS_MAX_BPMN_BYTES", 1 << 20, integer=True))
        poll = _setting("LIFECYCLE_WORKFLOWS_POLL_SECONDS", 1.0)
        batch = int(_setting("LIFECYCLE_WORKFLOWS_TIMER_BATCH", 500, integer=True))
        engine = Engine(context, clock, users_profile_reader(context))
        servicer = WorkflowServicer(
            engine, Catalog(engine, max_bpmn), Executions(engine), context.page_tokens
        )

        def register(server: grpc.aio.Server) -> None:
            workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(servicer, server)

        workers: list[Worker] = [
            TimerWorker(engine, batch, poll),
            BuiltinJobWorker(engine, 100, poll, timedelta(seconds=60)),
        ]
        return ServiceComponents(register=register, workers=workers)

    return build


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    """Deletes executions that finished more than a year ago, in batches, and the
    messages nobody can receive nor repeat any more."""
    cutoff = datetime(today.year, today.month, today.day, tzinfo=UTC) - RETENTION
    deleted = 0
    while True:
        batch = await store.delete_finished(conn, cutoff, RETENTION_BATCH)
        deleted += batch
        if batch < RETENTION_BATCH:
            break
    stale = await store.delete_stale_messages(conn, cutoff + RETENTION - timedelta(days=1))
    return [
        f"deleted {deleted} executions finished before {cutoff.date()}",
        f"deleted {stale} expired messages",
    ]


DEFINITION = ServiceDefinition(
    name="workflows",
    migrations=Path(__file__).parent / "migrations",
    build=build_with(SystemClock()),
    destinations={RECORD_EVENTS: DESTINATIONS[RECORD_EVENTS]},
    calls=frozenset({"users"}),
    maintenance=maintenance,
    waiting=store.WAITING_USERS_CALLS,
    batch_items=frozenset({"lifecycle.workflows.v1.PublishMessagesRequest.messages"}),
)
