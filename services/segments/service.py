"""How the runtime builds and runs the segments service."""

from __future__ import annotations

from pathlib import Path

import grpc

from clients.users import UsersClient
from lifecycle.segments.v1 import segments_pb2_grpc
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.lifecycle_events import RECORD_EVENTS, TRACK_EVENTS, destinations
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition, Worker
from services.segments.compiled import CompiledSegments
from services.segments.handlers import Memberships, SegmentDirectory
from services.segments.maintenance import maintenance
from services.segments.servicer import SegmentServicer
from services.segments.settings import SegmentSettings, load_settings
from services.segments.workers import Refresher


async def build(
    context: ServiceContext,
    *,
    clock: Clock = SYSTEM_CLOCK,
    settings: SegmentSettings | None = None,
) -> ServiceComponents:
    settings = settings or load_settings()
    compiled = CompiledSegments()
    users = UsersClient(context.clients, settings.match_timeout)
    memberships = Memberships(context, compiled, users, clock, settings)
    servicer = SegmentServicer(
        SegmentDirectory(context, compiled, users, clock), memberships, context.page_tokens
    )

    def register(server: grpc.aio.Server) -> None:
        segments_pb2_grpc.add_SegmentServiceServicer_to_server(servicer, server)

    workers: list[Worker] = []
    if settings.scheduler_interval > 0:
        workers.append(Refresher(memberships, settings.scheduler_interval))
    return ServiceComponents(register=register, workers=workers)


DEFINITION = ServiceDefinition(
    name="segments",
    migrations=Path(__file__).parent / "migrations",
    build=build,
    destinations=destinations(RECORD_EVENTS, TRACK_EVENTS),
    calls=frozenset({"users"}),
    maintenance=maintenance,
)
