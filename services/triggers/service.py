"""How the runtime builds and runs the triggers service."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from clients.users import UsersClient
from lifecycle.triggers.v1 import triggers_pb2_grpc
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.lifecycle_events import DESTINATIONS, RECORD_EVENTS
from runtime.partitions import PartitionedTable
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.triggers import ingest, store
from services.triggers.handlers import (
    Ingestor,
    TriggerDirectory,
    TriggerHistory,
    WorkflowStarts,
)
from services.triggers.ingest import IngestPipeline, TriggerCache
from services.triggers.maintenance import maintenance
from services.triggers.peers import Workflows
from services.triggers.servicer import TriggerServicer
from services.triggers.settings import TriggerSettings, load_settings
from services.triggers.workers import Starter

EXECUTIONS = PartitionedTable("trigger_executions", "month", ahead=3)


def build_with(
    clock: Clock = SYSTEM_CLOCK, settings: TriggerSettings | None = None
) -> Callable[[ServiceContext], Coroutine[Any, Any, ServiceComponents]]:
    """The service's build function on a clock (tests pass their own)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        chosen = settings or load_settings()
        workflows = Workflows(context.clients, context.tracer_provider.get_tracer(__name__))
        starter = Starter(
            WorkflowStarts(
                context, workflows, max_backoff_seconds=context.config.outbox_max_backoff
            ),
            poll_interval=context.config.outbox_poll_interval,
            max_backoff_seconds=context.config.outbox_max_backoff,
        )
        pipeline = IngestPipeline(
            context,
            TriggerCache(context.pool),
            UsersClient(context.clients),
            clock=clock,
            message_ttl=chosen.message_ttl,
            event_retention=chosen.event_retention,
            on_starts=starter.wake,
        )
        servicer = TriggerServicer(
            TriggerDirectory(context, workflows),
            TriggerHistory(context),
            Ingestor(pipeline, chosen.ingest_lanes, context.tracer_provider.get_tracer(__name__)),
            context.page_tokens,
            clock,
        )

        def register(server: grpc.aio.Server) -> None:
            triggers_pb2_grpc.add_TriggerServiceServicer_to_server(servicer, server)

        return ServiceComponents(register=register, workers=[starter])

    return build


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
