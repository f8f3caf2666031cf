"""How the runtime builds and runs the segments service."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc

from lifecycle.segments.v1 import segments_pb2_grpc
from runtime import tombstones
from runtime.lifecycle_events import RECORD_EVENTS, TRACK_EVENTS, destinations
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition, Worker
from services.segments.domain import Clock, system_clock
from services.segments.handlers import Catalog, Memberships, SegmentDirectory
from services.segments.refresher import Refresher
from services.segments.servicer import SegmentServicer
from services.segments.settings import SegmentSettings, load_settings
from services.segments.users_client import UsersClient

# Erased users' ids are kept this long, for messages about them still in flight.
TOMBSTONE_DAYS = 90


async def build(
    context: ServiceContext,
    *,
    clock: Clock = system_clock,
    settings: SegmentSettings | None = None,
) -> ServiceComponents:
    settings = settings or load_settings()
    catalog = Catalog()
    users = UsersClient(context.clients, settings.match_timeout)
    memberships = Memberships(context, catalog, users, clock, settings)
    servicer = SegmentServicer(
        SegmentDirectory(context, catalog, users, clock), memberships, context.page_tokens
    )

    def register(server: grpc.aio.Server) -> None:
        segments_pb2_grpc.add_SegmentServiceServicer_to_server(servicer, server)

    workers: list[Worker] = []
    if settings.scheduler_interval > 0:
        workers.append(Refresher(memberships, context.pool, clock, settings.scheduler_interval))
    return ServiceComponents(register=register, workers=workers)


async def maintenance(conn: asyncpg.Connection, today: date) -> list[str]:
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    forgotten = await tombstones.forget(conn, midnight - timedelta(days=TOMBSTONE_DAYS))
    return [f"segments: forgot {forgotten} erased users older than {TOMBSTONE_DAYS} days"]


DEFINITION = ServiceDefinition(
    name="segments",
    migrations=Path(__file__).parent / "migrations",
    build=build,
    destinations=destinations(RECORD_EVENTS, TRACK_EVENTS),
    calls=frozenset({"users"}),
    maintenance=maintenance,
)
