"""How the runtime builds and runs the metrics service."""

from __future__ import annotations

from pathlib import Path

import grpc

from lifecycle.metrics.v1 import metrics_pb2_grpc
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.metrics.commands import add_commands
from services.metrics.domain import EVENTS_TABLE, METRICS_TABLE
from services.metrics.handlers import EventLog, Reports, Rollups
from services.metrics.maintenance import maintenance
from services.metrics.servicer import MetricsServicer
from services.metrics.settings import MetricsSettings, load_settings
from services.metrics.workers import RollupScheduler


def builder(clock: Clock, settings: MetricsSettings | None = None) -> ServiceDefinition:
    """The service with the clock its rollups and snapshots read, and its
    settings (read from the environment at start when not given)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        nonlocal settings
        settings = settings or load_settings()
        rollups = Rollups(context.pool, clock, settings.late_days)
        servicer = MetricsServicer(
            EventLog(context), Reports(context, rollups, clock), context.page_tokens, clock
        )

        def register(server: grpc.aio.Server) -> None:
            metrics_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)

        interval = settings.rollup_interval
        scheduled = [RollupScheduler(rollups, interval)] if interval > 0 else []
        return ServiceComponents(register=register, workers=scheduled)

    return ServiceDefinition(
        name="metrics",
        migrations=Path(__file__).parent / "migrations",
        build=build,
        partitioned_tables=(EVENTS_TABLE, METRICS_TABLE),
        maintenance=maintenance,
        commands=add_commands,
        batch_items=frozenset({"lifecycle.metrics.v1.RecordEventsRequest.events"}),
    )


DEFINITION = builder(SYSTEM_CLOCK)
