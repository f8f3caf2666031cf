"""The outbox relay against real services: messages wait while the callee is
down, are retried with backoff, survive a crashed relay's claim, and are
delivered exactly once when the callee answers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.auth import AuthConfig, CallingService, ServiceToken
from runtime.clients import GRPC_SERVICES, ServiceClients
from runtime.database import unit_of_work
from runtime.identity import ON_BEHALF_OF
from runtime.lifecycle_events import RECORD_EVENTS, EventBatch
from runtime.outbox import Destination, OutboxRelay, retry_dead_letters
from runtime.server import ServiceHost
from tests.support import (
    SPANS,
    TRACER_PROVIDER,
    ScratchDatabase,
    eventually,
    free_port,
    running,
    service_env,
)

pytestmark = pytest.mark.users

CREATE_USER = "test.create_user"
DESTINATIONS = {CREATE_USER: Destination("users", f"/{GRPC_SERVICES['users']}/CreateUser")}
MAX_REFUSALS = 4


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
    pool = users_host.context.pool
    yield OutboxRelay(
        pool,
        clients,
        DESTINATIONS,
        service="users",
        lease_seconds=1.0,
        max_refusals=MAX_REFUSALS,
    )
    await clients.close()
    await pool.execute("DELETE FROM outbox WHERE topic = $1", CREATE_USER)
    await pool.execute("DELETE FROM outbox_dead_letters WHERE topic = $1", CREATE_USER)


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


async def test_a_refused_message_is_retried_with_growing_backoff_then_kept_as_a_dead_letter(
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
        await make_due(pool, CREATE_USER)
        await relay.relay_once()
    assert await pending(pool, CREATE_USER) == []
    [dead] = await pool.fetch("SELECT * FROM outbox_dead_letters WHERE topic = $1", CREATE_USER)
    assert dead["attempts"] == MAX_REFUSALS
    assert "user.email" in dead["last_error"]
    assert create_user_payload("not-an-email") == dead["payload"]
    async with pool.acquire() as conn:
        assert await retry_dead_letters(conn, CREATE_USER) == 1  # type: ignore[arg-type]
    [again] = await pending(pool, CREATE_USER)
    assert again["attempts"] == 0


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

        async def claimed_again() -> bool:
            # Not made due by hand: only the dead relay's claim running out frees the row.
            return await relay.relay_once() > 0

        await eventually(claimed_again)
        await relay_until_delivered(relay, pool, CREATE_USER)


async def pending_events_of(pool: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    """The users service's outbox rows that carry an event about `user_id`."""
    rows = await pool.fetch(
        "SELECT id, payload, attempts, last_error FROM outbox WHERE topic = $1", RECORD_EVENTS
    )
    return [
        r
        for r in rows
        if any(
            e.user_id == user_id
            for e in metrics_pb2.RecordEventsRequest.FromString(r["payload"]).events
        )
    ]


async def test_users_events_wait_while_metrics_is_stopped_and_arrive_once_when_it_starts(
    own_database: ScratchDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a database of its own: on the shared one, other tests' relays claim
    this outbox's rows too, and send them where their own metrics service is."""
    monkeypatch.setenv("LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS", "0")
    ports = {"users": free_port(), "metrics": free_port()}
    env = service_env(own_database, ports)
    async with running("users", env) as users_host:
        assert users_host.context is not None
        pool, relay = users_host.context.pool, users_host.context.relay
        with TRACER_PROVIDER.get_tracer("test").start_as_current_span("caller") as caller:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            async with grpc.aio.insecure_channel(users_host.address) as channel:
                stub = users_pb2_grpc.UserServiceStub(channel)
                created = await stub.CreateUser(
                    users_pb2.CreateUserRequest(
                        user=users_pb2.User(email=f"pending-{uuid.uuid4().hex[:8]}@example.com")
                    ),
                    metadata=tuple(carrier.items()),
                )
        user_id = created.user.id
        mine: list[asyncpg.Record] = []
        for _ in range(100):
            mine = [r for r in await pending_events_of(pool, user_id) if r["last_error"]]
            if mine:
                break
            await asyncio.sleep(0.1)
        assert mine, "the relay did not try to deliver the event"
        assert all("UNAVAILABLE" in r["last_error"] for r in mine)

        async with running("metrics", env) as metrics_host:
            for _ in range(50):
                await pool.execute(
                    "UPDATE outbox SET available_at = now() WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in mine],
                )
                await relay.relay_once()
                if not await pending_events_of(pool, user_id):
                    break
                await asyncio.sleep(0.1)
            assert await pending_events_of(pool, user_id) == []
            async with grpc.aio.insecure_channel(metrics_host.address) as channel:
                metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
                # A redelivery (a relay that died before deleting its rows) stores nothing twice.
                again = await metrics.RecordEvents(
                    metrics_pb2.RecordEventsRequest.FromString(mine[0]["payload"])
                )
                listed = await metrics.ListEvents(metrics_pb2.ListEventsRequest(user_id=user_id))
    assert again.recorded_count == 0
    assert [(e.event_type, e.producer) for e in listed.events] == [("user.created", "users")]
    # The delivery, long after the call, still belongs to the trace of the call:
    # in it, or linked to it when the batch went out in an earlier message's trace.
    trace_id = caller.get_span_context().trace_id
    spans = SPANS.get_finished_spans()
    assert any(
        s.name == "/lifecycle.users.v1.UserService/CreateUser" and s.context.trace_id == trace_id
        for s in spans
    )
    deliveries = {
        s.context.span_id
        for s in spans
        if s.name == "outbox metrics.record_events"
        and trace_id in {s.context.trace_id, *(link.context.trace_id for link in s.links)}
    }
    assert any(
        s.name == "/lifecycle.metrics.v1.MetricsService/RecordEvents"
        and s.parent is not None
        and s.parent.span_id in deliveries
        for s in spans
    )


class Recorder:
    """A callee that keeps each call's request and the actors it was made for."""

    SERVICE = "test.Recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes]] = []

    async def record(self, request: bytes, context: Any) -> bytes:
        metadata = dict(context.invocation_metadata())
        self.calls.append((json.loads(metadata.get(ON_BEHALF_OF, "[]")), request))
        return b""

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        method = grpc.unary_unary_rpc_method_handler(self.record)
        return grpc.method_handlers_generic_handler(self.SERVICE, {"Record": method})


async def test_messages_of_different_chains_are_each_sent_on_behalf_of_their_own(
    users_host: ServiceHost,
) -> None:
    """Mergeable messages merge with those of the same chain only: one call per
    chain, each carrying it (as the users service's calls carry it)."""
    assert users_host.context is not None
    pool = users_host.context.pool
    recorder = Recorder()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((recorder.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    identity = CallingService("users", ServiceToken(AuthConfig(), "users"))
    clients = ServiceClients({"users": f"127.0.0.1:{port}"}, 2.0, identity=identity)
    topic = f"test.record_{uuid.uuid4().hex[:8]}"
    destination = Destination("users", f"/{Recorder.SERVICE}/Record", mergeable=True)
    relay = OutboxRelay(pool, clients, {topic: destination}, service="users")
    alice, bob = ("alice",), ("bob", "service:triggers")
    try:
        async with unit_of_work(pool) as work:
            for payload, chain in ((b"a1", alice), (b"b1", bob), (b"a2", alice)):
                work.publish(topic, payload, chain)
        await relay.relay_once()
    finally:
        await clients.close()
        await server.stop(None)
    assert sorted(recorder.calls) == [(["alice"], b"a1a2"), (["bob", "service:triggers"], b"b1")]
    assert not await pending(pool, topic)


class SlowRecorder(Recorder):
    """A callee too slow for a call of more than two messages (of two bytes each)."""

    async def record(self, request: bytes, context: Any) -> bytes:
        if len(request) > 4:
            await asyncio.sleep(1.0)
        return await super().record(request, context)


async def test_a_merged_call_that_outruns_its_deadline_goes_again_in_halves(
    users_host: ServiceHost,
) -> None:
    assert users_host.context is not None
    pool = users_host.context.pool
    recorder = SlowRecorder()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((recorder.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    identity = CallingService("users", ServiceToken(AuthConfig(), "users"))
    clients = ServiceClients({"users": f"127.0.0.1:{port}"}, 0.5, identity=identity)
    topic = f"test.record_{uuid.uuid4().hex[:8]}"
    destination = Destination("users", f"/{Recorder.SERVICE}/Record", mergeable=True)
    relay = OutboxRelay(pool, clients, {topic: destination}, service="users")
    try:
        async with unit_of_work(pool) as work:
            for n in range(1, 7):
                work.publish(topic, f"m{n}".encode(), ("alice",))
        await relay.relay_once()
    finally:
        await clients.close()
        await server.stop(None)
    delivered = b"".join(sorted(request for _, request in recorder.calls))
    assert sorted(delivered[i : i + 2] for i in range(0, len(delivered), 2)) == [
        f"m{n}".encode() for n in range(1, 7)
    ]
    assert all(len(request) <= 4 for _, request in recorder.calls)
    assert not await pending(pool, topic)


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
