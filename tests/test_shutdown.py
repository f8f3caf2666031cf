"""A service that stops (SIGTERM, or `stop()`) finishes the calls it took and
answers the calls that arrive meanwhile UNAVAILABLE, which clients retry,
never CANCELLED; the services' own clients retry those within a budget."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clients import ServiceClients
from runtime.server import ServiceHost
from suite.registry import DEFINITIONS
from tests.support import (
    SPANS,
    TRACER_PROVIDER,
    ScratchDatabase,
    error_info,
    free_port,
    rpc_error,
    service_config,
    service_env,
)

pytestmark = pytest.mark.users

CALLERS = 32
GET_USER = "/lifecycle.users.v1.UserService/GetUser"


def users_host(database: ScratchDatabase) -> ServiceHost:
    env = service_env(database, {"users": free_port()})
    return ServiceHost(DEFINITIONS["users"], service_config("users", env), TRACER_PROVIDER)


async def refusal(stub: users_pb2_grpc.UserServiceAsyncStub) -> grpc.aio.AioRpcError:
    """The first error a GetUser meets, called again and again until one fails
    otherwise than NOT_FOUND."""
    for _ in range(100_000):
        try:
            await stub.GetUser(users_pb2.GetUserRequest(user_id=str(uuid.uuid4())), timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                return error
    raise AssertionError("no call was refused")


@dataclass
class Stopping:
    """A users service stopping while an ImportUsers stream it took is open."""

    stub: users_pb2_grpc.UserServiceAsyncStub
    address: str
    stopped: asyncio.Future[None]
    more: asyncio.Event
    imported: asyncio.Future[users_pb2.ImportUsersResponse]


@asynccontextmanager
async def stopping_with_an_import_open(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> AsyncIterator[Stopping]:
    """The service stops once the test sets `more`: the stream then sends its
    second batch and ends."""
    host = users_host(database)
    await host.start()
    run = uuid.uuid4().hex[:8]
    first = f"first-{run}@example.com"
    more = asyncio.Event()

    async def batches() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(users=[users_pb2.UserImport(email=first)])
        await more.wait()
        second = users_pb2.UserImport(email=f"second-{run}@example.com")
        yield users_pb2.ImportUsersRequest(users=[second])

    async with grpc.aio.insecure_channel(host.address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        imported = asyncio.ensure_future(stub.ImportUsers(batches(), timeout=30))
        for _ in range(100):
            if await admin.fetchval("SELECT count(*) FROM users.users WHERE email = $1", first):
                break
            await asyncio.sleep(0.05)
        stopped = asyncio.ensure_future(host.stop())
        try:
            yield Stopping(stub, host.address, stopped, more, imported)
        finally:
            more.set()
            await asyncio.gather(imported, stopped, return_exceptions=True)


async def test_a_call_in_flight_finishes_while_calls_after_the_stop_get_unavailable(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    async with stopping_with_an_import_open(database, admin) as stopping:
        refused = await refusal(stopping.stub)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(refused).reason == "SHUTTING_DOWN"
        assert not stopping.stopped.done()
        stopping.more.set()
        imported = await stopping.imported
        await stopping.stopped
    assert imported.created_count == 2


async def test_calls_arriving_during_a_stop_under_load_are_never_cancelled(
    database: ScratchDatabase,
) -> None:
    host = users_host(database)
    await host.start()
    async with grpc.aio.insecure_channel(host.address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        callers = [asyncio.ensure_future(refusal(stub)) for _ in range(CALLERS)]
        await asyncio.sleep(0.5)
        await host.stop()
        errors = await asyncio.gather(*callers)
    assert Counter(error.code() for error in errors) == {grpc.StatusCode.UNAVAILABLE: CALLERS}


async def test_the_services_clients_retry_a_stopping_replica_within_a_budget(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    """Each failed attempt spends the channel's retry budget, so a run of refusals
    costs a few retries in all rather than two more attempts per call."""
    calls = 20
    async with stopping_with_an_import_open(database, admin) as stopping:
        await refusal(stopping.stub)
        clients = ServiceClients({"users": stopping.address}, default_timeout=2.0)
        stub = users_pb2_grpc.UserServiceStub(clients.channel("users"))
        with TRACER_PROVIDER.get_tracer("test").start_as_current_span("caller") as caller:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            for _ in range(calls):
                error = await rpc_error(
                    stub.GetUser(
                        users_pb2.GetUserRequest(user_id=str(uuid.uuid4())),
                        metadata=tuple(carrier.items()),
                    )
                )
                assert error.code() == grpc.StatusCode.UNAVAILABLE
        await clients.close()
    attempts = [
        span
        for span in SPANS.get_finished_spans()
        if span.name == GET_USER
        and span.kind == SpanKind.SERVER
        and span.context.trace_id == caller.get_span_context().trace_id
    ]
    assert calls < len(attempts) <= calls + 5
