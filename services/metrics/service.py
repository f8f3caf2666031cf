"""How the runtime builds and runs the metrics service."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import asyncpg
import grpc

from lifecycle.metrics.v1 import metrics_pb2_grpc
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.metrics.archive import apply_retention, open_archive
from services.metrics.commands import add_commands
from services.metrics.domain import EVENTS_TABLE, METRICS_TABLE
from services.metrics.handlers import EventLog, Reports
from services.metrics.rollup import Clock, RollupScheduler, system_clock
from services.metrics.servicer import MetricsServicer
from services.metrics.settings import MetricsSettings, load_settings


def builder(clock: Clock, settings: MetricsSettings | None = None) -> ServiceDefinition:
    """The service with the clock its rollups and snapshots read, and its
    settings (read from the environment at start when not given)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        nonlocal settings
        settings = settings or load_settings()
        scheduler = RollupScheduler(
            context.pool, clock, settings.rollup_interval, settings.late_days
        )
        servicer = MetricsServicer(
            EventLog(context), Reports(context, scheduler, clock), context.page_tokens, clock
        )

        def register(server: grpc.aio.Server) -> None:
            metrics_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)

        scheduled = [scheduler] if settings.rollup_interval > 0 else []
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


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    """Retention: event partitions older than 2 years archived, then dropped;
    daily metrics older than 3 years removed."""
    return await apply_retention(conn, open_archive(load_settings()), today)


DEFINITION = builder(system_clock)
