"""How the runtime builds and runs the users service."""

from __future__ import annotations

from pathlib import Path

import grpc

from lifecycle.users.v1 import users_pb2_grpc
from runtime.lifecycle_events import DESTINATIONS
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.users.handlers import UserDirectory
from services.users.servicer import UserServicer


async def build(context: ServiceContext) -> ServiceComponents:
    servicer = UserServicer(UserDirectory(context), context.page_tokens)

    def register(server: grpc.aio.Server) -> None:
        users_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)

    return ServiceComponents(register=register)


DEFINITION = ServiceDefinition(
    name="users",
    migrations=Path(__file__).parent / "migrations",
    build=build,
    destinations=DESTINATIONS,
)
