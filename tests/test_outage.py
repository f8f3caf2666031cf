"""A database outage as callers see it: every call fails fast with
UNAVAILABLE, and the services do not multiply the load by retrying each
other blindly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.config import service_role, with_user
from tests.support import (
    SPANS,
    TRACER_PROVIDER,
    ScratchDatabase,
    TcpProxy,
    error_info,
    free_port,
    rpc_error,
    running,
    service_env,
)

pytestmark = pytest.mark.users

BATCH_GET_USER_PROFILES = "/lifecycle.users.v1.UserService/BatchGetUserProfiles"


@pytest.fixture
async def database_proxy(database: ScratchDatabase) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(database.admin_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def through(proxy: TcpProxy, database: ScratchDatabase, service: str) -> str:
    """The service's own database URL, by way of the proxy."""
    url = f"postgresql://127.0.0.1:{proxy.port}/{database.name}"
    return with_user(url, service_role(database.admin_url, service))


async def test_track_event_fails_fast_with_unavailable_while_the_database_is_down(
    database: ScratchDatabase, database_proxy: TcpProxy
) -> None:
    env = service_env(
        database,
        {"users": free_port(), "triggers": free_port()},
        LIFECYCLE_USERS_DATABASE_URL=through(database_proxy, database, "users"),
        LIFECYCLE_TRIGGERS_DATABASE_URL=through(database_proxy, database, "triggers"),
    )
    async with (
        running("users", env),
        running("triggers", env) as triggers,
        grpc.aio.insecure_channel(triggers.address) as channel,
    ):
        stub = triggers_pb2_grpc.TriggerServiceStub(channel)
        await database_proxy.stop()
        tracer = TRACER_PROVIDER.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            started = time.monotonic()
            error = await rpc_error(
                stub.TrackEvent(
                    triggers_pb2.TrackEventRequest(
                        event=triggers_pb2.Event(
                            user_id=str(uuid.uuid4()),
                            event_type="login",
                            message_id=uuid.uuid4().hex,
                        )
                    ),
                    metadata=tuple(carrier.items()),
                    timeout=10,
                )
            )
            took = time.monotonic() - started
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "USERS_UNAVAILABLE"
    trace_id = caller.get_span_context().trace_id
    attempts = [
        span
        for span in SPANS.get_finished_spans()
        if span.name == BATCH_GET_USER_PROFILES
        and span.kind == SpanKind.SERVER
        and span.context.trace_id == trace_id
    ]
    assert len(attempts) == 1
    assert took < 1.0


async def test_a_database_that_never_answers_fails_a_call_within_the_connect_timeout(
    database: ScratchDatabase,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent_url = f"postgresql://127.0.0.1:{port}/{database.name}"
    env = service_env(
        database,
        {"users": free_port()},
        LIFECYCLE_USERS_DATABASE_URL=with_user(silent_url, "users"),
        LIFECYCLE_DB_CONNECT_TIMEOUT_SECONDS="0.5",
    )
    async with (
        server,
        running("users", env) as users,
        grpc.aio.insecure_channel(users.address) as channel,
    ):
        started = time.monotonic()
        error = await rpc_error(
            users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=str(uuid.uuid4())), timeout=10
            )
        )
        took = time.monotonic() - started
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "DATABASE_UNAVAILABLE"
    assert took < 3
