"""Outbox messages that hold many items (runtime.outbox.MergedMessages): a
call never holds more items than its destination takes, and when the callee
refuses some items of a message, the message keeps only those (the others
were delivered), on to the dead letters.

The callee is a real workflows service, whose PublishMessages answers each
message alone; the relay works on a users service's outbox, as any service's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lifecycle.workflows.v1 import workflows_pb2
from runtime.clients import ServiceClients
from runtime.database import unit_of_work
from runtime.outbox import Destination, MergedMessages, OutboxRelay
from services.triggers.ingest import DESTINATIONS as TRIGGERS_DESTINATIONS
from services.triggers.ingest import PUBLISH_MESSAGES
from tests.support import SPANS, TRACER_PROVIDER, ScratchDatabase, free_port, running, service_env

TOPIC = "test.publish_messages"
MAX_REFUSALS = 3
# What PublishMessages takes in one call.
CALL_LIMIT = 1000


@pytest.fixture
async def publishing(own_database: ScratchDatabase) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """A users service's outbox pool, and a workflows service to publish to."""
    ports = {"users": free_port(), "workflows": free_port()}
    env = service_env(own_database, ports)
    async with running("users", env) as users, running("workflows", env):
        assert users.context is not None
        yield users.context.pool, f"127.0.0.1:{ports['workflows']}"


async def relay_to(address: str, pool: asyncpg.Pool) -> AsyncIterator[OutboxRelay]:
    clients = ServiceClients({"workflows": address}, default_timeout=10.0)
    destination = TRIGGERS_DESTINATIONS[PUBLISH_MESSAGES]
    try:
        yield OutboxRelay(
            pool,
            clients,
            {
                TOPIC: Destination(
                    "workflows", destination.method, True, CALL_LIMIT, destination.refused_items
                )
            },
            service="users",
            max_refusals=MAX_REFUSALS,
            tracer_provider=TRACER_PROVIDER,
        )
    finally:
        await clients.close()


def message(name: str, n: int, correlation_key: str | None = None) -> bytes:
    """An item of PublishMessages: a message nobody waits for, kept an hour."""
    published = workflows_pb2.PublishMessageRequest(
        name=name,
        correlation_key=correlation_key or str(uuid.UUID(int=n)),
        message_id=f"merged-{name}-{n}",
    )
    published.time_to_live.FromSeconds(3600)
    return workflows_pb2.PublishMessagesRequest(messages=[published]).SerializeToString()


async def publish(pool: asyncpg.Pool, *rows: list[bytes]) -> None:
    """One outbox message per list of items."""
    async with unit_of_work(pool) as work:
        for items in rows:
            merged = MergedMessages(TOPIC, per_message=len(items))
            for item in items:
                merged.add(item, ())
            work.messages.extend(merged)


async def rows_of(pool: asyncpg.Pool, table: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT payload, items, attempts, last_error FROM {table} WHERE topic = $1", TOPIC
    )


async def test_a_call_holds_no_more_items_than_the_callee_takes(
    publishing: tuple[asyncpg.Pool, str],
) -> None:
    pool, address = publishing
    await publish(
        pool, [message("big", n) for n in range(600)], [message("big", n) for n in range(600, 1200)]
    )
    SPANS.clear()
    async for relay in relay_to(address, pool):
        assert await relay.relay_once() == 2
    assert await rows_of(pool, "outbox") == []
    calls = [span for span in SPANS.get_finished_spans() if span.name == f"outbox {TOPIC}"]
    # Merged, the 1,200 messages would be refused as one call, then sent row by row.
    assert [dict(span.attributes or {}).get("messaging.batch.message_count") for span in calls] == [
        1,
        1,
    ]
    assert all(span.status.is_ok for span in calls)


async def test_a_message_keeps_only_the_items_the_callee_refused_until_they_are_dead_letters(
    publishing: tuple[asyncpg.Pool, str],
) -> None:
    pool, address = publishing
    bad = message("fine", 1, correlation_key="not a user id")
    await publish(pool, [message("fine", 0), bad, message("fine", 2)], [message("other", 3)])
    async for relay in relay_to(address, pool):
        for _ in range(MAX_REFUSALS):
            await pool.execute("UPDATE outbox SET available_at = now() WHERE topic = $1", TOPIC)
            await relay.relay_once()
            if rows := await rows_of(pool, "outbox"):
                [row] = rows
                assert (row["payload"], row["items"]) == (bad, 1)
                assert "correlation_key" in row["last_error"]
    assert await rows_of(pool, "outbox") == []
    [dead] = await rows_of(pool, "outbox_dead_letters")
    assert (dead["payload"], dead["items"], dead["attempts"]) == (bad, 1, MAX_REFUSALS)
