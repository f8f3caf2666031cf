"""How the runtime builds and runs the users service."""

from __future__ import annotations

from pathlib import Path

import grpc

from lifecycle.users.v1 import users_pb2_grpc
from runtime.clients import GRPC_SERVICES
from runtime.clock import SYSTEM_CLOCK
from runtime.lifecycle_events import ERASE_TOPICS, RECORD_EVENTS, TRACK_EVENTS, destinations
from runtime.outbox import Destination
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.users.handlers import REEVALUATE_USERS, UserDirectory, UserMatcher
from services.users.maintenance import maintenance
from services.users.recording import UserEvents
from services.users.servicer import UserServicer
from services.users.settings import load_settings


async def build(context: ServiceContext) -> ServiceComponents:
    settings = load_settings()
    matcher = UserMatcher(context, settings.condition_timeout)
    events = UserEvents(context, SYSTEM_CLOCK, settings.event_retention)
    servicer = UserServicer(UserDirectory(context), matcher, context.page_tokens, events)

    def register(server: grpc.aio.Server) -> None:
        users_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)

    return ServiceComponents(register=register)


DEFINITION = ServiceDefinition(
    name="users",
    migrations=Path(__file__).parent / "migrations",
    build=build,
    destinations={
        **destinations(RECORD_EVENTS, TRACK_EVENTS, *ERASE_TOPICS.values()),
        # At most 5000 users per call, so that one call stays well within its deadline.
        REEVALUATE_USERS: Destination(
            "segments",
            f"/{GRPC_SERVICES['segments']}/ReevaluateUsers",
            mergeable=True,
            max_batch=5000,
        ),
    },
    batch_items=frozenset({"lifecycle.users.v1.ImportUsersRequest.users"}),
    maintenance=maintenance,
)
