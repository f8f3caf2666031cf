"""What a service holds open for its callers is bounded: a connection that
never finishes its handshake is closed, so is one that stays idle, one
connection carries a bounded number of calls at once, and calls past the
service's cap are answered RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition, ServiceHost
from suite.registry import DEFINITIONS
from tests.support import TRACER_PROVIDER, rpc_error, service_config

pytestmark = pytest.mark.users

SOCKETS = 2000


class HeldCalls:
    """GetUser calls that wait until released, counting those being served."""

    def __init__(self) -> None:
        self.serving = 0
        self.release = asyncio.Event()

    async def get_user(self, request: bytes, context: Any) -> bytes:
        self.serving += 1
        try:
            await self.release.wait()
        finally:
            self.serving -= 1
        return users_pb2.GetUserResponse().SerializeToString()

    async def build(self, context: ServiceContext) -> ServiceComponents:
        handler = grpc.method_handlers_generic_handler(
            "lifecycle.users.v1.UserService",
            {"GetUser": grpc.unary_unary_rpc_method_handler(self.get_user)},
        )
        return ServiceComponents(
            register=lambda server: server.add_generic_rpc_handlers((handler,))
        )


@asynccontextmanager
async def serving(
    suite_env: dict[str, str], calls: HeldCalls, **limits: str
) -> AsyncIterator[ServiceHost]:
    definition = ServiceDefinition(
        name="users", migrations=DEFINITIONS["users"].migrations, build=calls.build
    )
    config = service_config("users", {**suite_env, "LIFECYCLE_USERS_PORT": "0", **limits})
    host = ServiceHost(definition, config, TRACER_PROVIDER)
    await host.start()
    try:
        yield host
    finally:
        calls.release.set()
        await host.stop()


async def closed_by_the_server(sock: socket.socket) -> None:
    """Reads (and drops what the server says) until it closes the connection."""
    loop = asyncio.get_running_loop()
    with sock:
        while await loop.sock_recv(sock, 4096):
            pass


async def test_connections_that_never_speak_http2_are_closed_after_the_handshake_timeout(
    suite_env: dict[str, str],
) -> None:
    calls = HeldCalls()
    async with serving(suite_env, calls, LIFECYCLE_HANDSHAKE_TIMEOUT_SECONDS="1") as host:
        sockets = []
        for _ in range(SOCKETS):
            sock = socket.create_connection(("127.0.0.1", host.port))
            sock.setblocking(False)
            sockets.append(sock)
        opened = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(closed_by_the_server(sock) for sock in sockets)), timeout=15
        )
        # All closed, none sooner than the timeout: the server waited for a handshake.
        assert time.monotonic() - opened >= 0.9


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    suite_env: dict[str, str],
) -> None:
    calls = HeldCalls()
    calls.release.set()
    async with (
        serving(suite_env, calls, LIFECYCLE_MAX_CONNECTION_IDLE_SECONDS="1") as host,
        grpc.aio.insecure_channel(host.address) as channel,
    ):
        await users_pb2_grpc.UserServiceStub(channel).GetUser(users_pb2.GetUserRequest())
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        for _ in range(100):
            if channel.get_state() != grpc.ChannelConnectivity.READY:
                break
            await asyncio.sleep(0.1)
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE


async def until_serving(calls: HeldCalls, count: int) -> None:
    for _ in range(100):
        if calls.serving >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{calls.serving} calls are served, not {count}")


async def test_one_connection_carries_a_bounded_number_of_calls_at_once(
    suite_env: dict[str, str],
) -> None:
    calls = HeldCalls()
    async with (
        serving(suite_env, calls, LIFECYCLE_MAX_STREAMS_PER_CONNECTION="3") as host,
        grpc.aio.insecure_channel(host.address) as channel,
    ):
        # Connected, so that the client knows the server's limit before it sends.
        await channel.channel_ready()
        stub = users_pb2_grpc.UserServiceStub(channel)
        sent = [
            asyncio.ensure_future(stub.GetUser(users_pb2.GetUserRequest(), timeout=10))
            for _ in range(8)
        ]
        await until_serving(calls, 3)
        await asyncio.sleep(0.3)
        assert calls.serving == 3
        calls.release.set()
        # The client held the others back; none failed.
        await asyncio.gather(*sent)


async def test_calls_past_the_services_cap_are_resource_exhausted_and_the_others_served(
    suite_env: dict[str, str],
) -> None:
    calls = HeldCalls()
    async with (
        serving(suite_env, calls, LIFECYCLE_MAX_CONCURRENT_CALLS="5") as host,
        grpc.aio.insecure_channel(host.address) as channel,
    ):
        stub = users_pb2_grpc.UserServiceStub(channel)
        held = [
            asyncio.ensure_future(stub.GetUser(users_pb2.GetUserRequest(), timeout=10))
            for _ in range(5)
        ]
        await until_serving(calls, 5)
        excess = await asyncio.gather(
            *(rpc_error(stub.GetUser(users_pb2.GetUserRequest(), timeout=10)) for _ in range(3))
        )
        assert [error.code() for error in excess] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        calls.release.set()
        await asyncio.gather(*held)
        await stub.GetUser(users_pb2.GetUserRequest(), timeout=10)
