"""How the runtime builds and runs the triggers service."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from lifecycle.triggers.v1 import triggers_pb2_grpc
from runtime import tombstones
from runtime.lifecycle_events import DESTINATIONS, RECORD_EVENTS
from runtime.partitions import PartitionedTable
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.triggers import ingest, store
from services.triggers.cache import TriggerCache
from services.triggers.domain import Clock, system_clock
from services.triggers.handlers import TriggerCatalog, TriggerHistory
from services.triggers.ingest import Ingestor, IngestPipeline
from services.triggers.peers import Users, Workflows
from services.triggers.servicer import TriggerServicer
from services.triggers.settings import TriggerSettings, load_settings
from services.triggers.starter import Starter

EXECUTIONS = PartitionedTable("trigger_executions", "month", ahead=3)
EXECUTION_RETENTION = timedelta(days=90)
# Erased users' ids are kept this long, for events about them still in flight.
TOMBSTONE_RETENTION = timedelta(days=90)
EVENTS_PER_DELETE = 5000
DROP_LOCK_TIMEOUT_MS = 2000


def build_with(
    clock: Clock = system_clock, settings: TriggerSettings | None = None
) -> Callable[[ServiceContext], Coroutine[Any, Any, ServiceComponents]]:
    """The service's build function on a clock (tests pass their own)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        chosen = settings or load_settings()
        starter = Starter(
            context,
            poll_interval=context.config.outbox_poll_interval,
            max_backoff_seconds=context.config.outbox_max_backoff,
        )
        pipeline = IngestPipeline(
            context,
            TriggerCache(context.pool),
            Users(context.clients),
            clock=clock,
            message_ttl=chosen.message_ttl,
            on_starts=starter.wake,
        )
        servicer = TriggerServicer(
            TriggerCatalog(context, Workflows(context.clients)),
            TriggerHistory(context),
            Ingestor(
                pipeline,
                chosen.ingest_lanes,
                context.tracer_provider.get_tracer(__name__),
            ),
            context.page_tokens,
            clock,
        )

        def register(server: grpc.aio.Server) -> None:
            triggers_pb2_grpc.add_TriggerServiceServicer_to_server(servicer, server)

        return ServiceComponents(register=register, workers=[starter])

    return build


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    """Retention: monthly partitions of trigger_executions whose every row is older
    than 90 days are dropped whole (a younger row keeps its partition); events
    past their retention, tombstones and spent re-entry limits are deleted."""
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    cutoff = (midnight - EXECUTION_RETENTION).date()
    dropped, busy = [], []
    for name, end in sorted((await store.execution_partitions(conn)).items()):
        if end <= cutoff:
            try:
                await store.drop_partition(conn, name, DROP_LOCK_TIMEOUT_MS)
                dropped.append(name)
            except asyncpg.LockNotAvailableError:
                busy.append(name)
    retention = load_settings().event_retention
    events = 0
    while True:
        deleted = await store.delete_events_before(conn, midnight - retention, EVENTS_PER_DELETE)
        events += deleted
        if deleted < EVENTS_PER_DELETE:
            break
    entries = await store.forget_entries(conn, midnight)
    forgotten = await tombstones.forget(conn, midnight - TOMBSTONE_RETENTION)
    return [
        f"dropped {len(dropped)} trigger_executions partitions ending by {cutoff}"
        + (f": {', '.join(dropped)}" if dropped else ""),
        f"deleted {events} events received before {(midnight - retention).date()}",
        f"forgot {entries} re-entry limits that expired and {forgotten} old tombstones",
        *(f"kept {name} for the next run: its table was busy" for name in busy),
    ]


DEFINITION = ServiceDefinition(
    name="triggers",
    migrations=Path(__file__).parent / "migrations",
    build=build_with(),
    partitioned_tables=(EXECUTIONS,),
    destinations={RECORD_EVENTS: DESTINATIONS[RECORD_EVENTS], **ingest.DESTINATIONS},
    calls=frozenset({"users", "workflows"}),
    maintenance=maintenance,
    waiting=store.WAITING_STARTS,
    batch_items=frozenset({"lifecycle.triggers.v1.TrackEventsRequest.events"}),
)
