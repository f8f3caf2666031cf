"""The outbox relay against real services: messages wait while the callee is
down or does not implement the call yet, are retried with backoff, survive a
crashed relay's claim, and are delivered exactly when the callee answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clients import GRPC_SERVICES, ServiceClients
from runtime.database import unit_of_work
from runtime.lifecycle_events import RECORD_EVENTS, EventBatch
from runtime.outbox import Destination, OutboxRelay
from runtime.server import ServiceHost
from tests.support import ScratchDatabase, free_port, running, service_env

pytestmark = pytest.mark.users

CREATE_USER = "test.create_user"
DESTINATIONS = {CREATE_USER: Destination("users", f"/{GRPC_SERVICES['users']}/CreateUser")}


def create_user_payload(email: str) -> bytes:
    return users_pb2.CreateUserRequest(user=users_pb2.User(email=email)).SerializeToString()


async def pending(pool: asyncpg.Pool, topic: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, attempts, last_error, available_at FROM outbox WHERE topic = $1", topic
    )


async def make_due(pool: asyncpg.Pool, topic: str) -> None:
    await pool.execute("UPDATE outbox SET available_at = now() WHERE topic = $1", topic)


async def relay_until_delivered(relay: OutboxRelay, pool: asyncpg.Pool, topic: str) -> None:
    """Relay rounds until the topic's rows are gone; a channel that saw the callee
    down may need a round or two to reconnect, as in production."""
    for _ in range(50):
        await make_due(pool, topic)
        await relay.relay_once()
        if not await pending(pool, topic):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{topic} was not delivered")


@pytest.fixture
async def callee_port() -> int:
    return free_port()


@pytest.fixture
async def relay(users_host: ServiceHost, callee_port: int) -> AsyncIterator[OutboxRelay]:
    """A relay on the users service's outbox that calls a users service at `callee_port`."""
    assert users_host.context is not None
    clients = ServiceClients({"users": f"127.0.0.1:{callee_port}"}, default_timeout=2.0)
    yield OutboxRelay(users_host.context.pool, clients, DESTINATIONS, lease_seconds=1.0)
    await clients.close()
    await users_host.context.pool.execute("DELETE FROM outbox WHERE topic = $1", CREATE_USER)


async def test_a_message_waits_while_the_callee_is_down_and_is_delivered_once_it_is_up(
    relay: OutboxRelay, users_host: ServiceHost, database: ScratchDatabase, callee_port: int
) -> None:
    assert users_host.context is not None
    pool = users_host.context.pool
    email = f"outbox-{uuid.uuid4().hex[:10]}@example.com"
    async with unit_of_work(pool) as work:
        work.publish(CREATE_USER, create_user_payload(email))

    await relay.relay_once()
    [row] = await pending(pool, CREATE_USER)
    assert row["attempts"] == 1
    assert "UNAVAILABLE" in row["last_error"]

    env = service_env(database, {"users": callee_port})
    async with running("users", env) as callee:
        await relay_until_delivered(relay, pool, CREATE_USER)
        async with grpc.aio.insecure_channel(callee.address) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            found = await stub.GetUser(users_pb2.GetUserRequest(email=email))
        assert found.user.email == email


async def test_a_refused_message_is_kept_and_retried_with_growing_backoff(
    relay: OutboxRelay, users_host: ServiceHost, database: ScratchDatabase, callee_port: int
) -> None:
    assert users_host.context is not None
    pool = users_host.context.pool
    async with unit_of_work(pool) as work:
        work.publish(CREATE_USER, create_user_payload("not-an-email"))
    env = service_env(database, {"users": callee_port})
    delays = []
    async with running("users", env):
        for _ in range(3):
            await make_due(pool, CREATE_USER)
            await relay.relay_once()
            [row] = await pending(pool, CREATE_USER)
            delays.append(
                (row["available_at"] - await pool.fetchval("SELECT now()")).total_seconds()
            )
    assert row["attempts"] == 3
    assert "INVALID_ARGUMENT" in row["last_error"]
    assert delays[0] < delays[1] < delays[2]


async def test_a_crashed_relays_claim_expires_and_another_relay_delivers(
    relay: OutboxRelay, users_host: ServiceHost, database: ScratchDatabase, callee_port: int
) -> None:
    assert users_host.context is not None
    pool = users_host.context.pool
    email = f"lease-{uuid.uuid4().hex[:10]}@example.com"
    async with unit_of_work(pool) as work:
        work.publish(CREATE_USER, create_user_payload(email))
    # A relay that claims the row and dies before answering.
    await pool.execute(
        "UPDATE outbox SET available_at = now() + interval '1 second', attempts = attempts + 1"
        " WHERE topic = $1",
        CREATE_USER,
    )
    env = service_env(database, {"users": callee_port})
    async with running("users", env):
        assert await relay.relay_once() == 0
        await asyncio.sleep(1.1)
        await relay_until_delivered(relay, pool, CREATE_USER)


async def test_users_events_stay_pending_while_metrics_does_not_implement_record_events(
    database: ScratchDatabase,
) -> None:
    ports = {"users": free_port(), "metrics": free_port()}
    env = service_env(database, ports)
    async with running("metrics", env), running("users", env) as users_host:
        async with grpc.aio.insecure_channel(users_host.address) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            created = await stub.CreateUser(
                users_pb2.CreateUserRequest(
                    user=users_pb2.User(email=f"pending-{uuid.uuid4().hex[:8]}@example.com")
                )
            )
        assert users_host.context is not None
        pool = users_host.context.pool
        rows: list[asyncpg.Record] = []
        for _ in range(100):
            rows = await pool.fetch(
                "SELECT payload, attempts, last_error FROM outbox"
                " WHERE topic = $1 AND attempts >= 2",
                RECORD_EVENTS,
            )
            mine = [
                r
                for r in rows
                if any(
                    e.user_id == created.user.id
                    for e in metrics_pb2.RecordEventsRequest.FromString(r["payload"]).events
                )
            ]
            if mine:
                break
            await asyncio.sleep(0.2)
        assert mine, "the relay did not retry the event"
        assert all(
            "UNIMPLEMENTED" in r["last_error"] or "UNAVAILABLE" in r["last_error"] for r in mine
        )


def test_merged_payloads_parse_as_one_request_holding_every_event() -> None:
    batch = EventBatch("users", per_request=1)
    for _ in range(3):
        batch.add("user.created", datetime.now(UTC), user_id=uuid.uuid4())
    payloads = batch.payloads()
    assert len(payloads) == 3
    events = [e for p in payloads for e in metrics_pb2.RecordEventsRequest.FromString(p).events]
    merged = metrics_pb2.RecordEventsRequest.FromString(b"".join(payloads))
    assert list(merged.events) == events
    assert len({e.event_id for e in events}) == 3
