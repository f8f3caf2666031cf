"""A service's connection pool and its unit of work."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg

from runtime.chains import Chain
from runtime.identity import current_caller
from runtime.outbox import Message, enqueue

# What a read runs on: a connection (inside a unit of work) or the pool itself,
# which acquires one for the statement, the cheapest way to run a single read.
Executor = asyncpg.Connection | asyncpg.Pool


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Services never change session state outside a transaction (only SET LOCAL),
    so a released connection needs no RESET ALL round trip; asyncpg still rolls
    back a transaction left open."""


async def create_pool(url: str, schema: str, max_size: int, connect_timeout: float) -> asyncpg.Pool:
    """A pool that connects lazily, so a service starts (NOT_SERVING) while its database is down.
    A database that does not answer fails a call's connection after `connect_timeout`
    (asyncpg waits a minute), so that the call fails with UNAVAILABLE, not its deadline."""
    pool = await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"search_path": schema, "application_name": f"lifecycle-{schema}"},
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool, for reads outside a unit of work."""
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


@dataclass
class UnitOfWork:
    """A transaction in progress, and the outbox messages it will commit with."""

    conn: asyncpg.Connection
    messages: list[Message] = field(default_factory=list)

    def publish(
        self, topic: str, payload: bytes, actors: Chain | None = None, *, items: int = 1
    ) -> None:
        """Sends the message on behalf of `actors`: by default, of the current caller.
        `items`: how many items of a mergeable request the payload holds."""
        chain = current_caller().actors if actors is None else actors
        self.messages.append(Message(topic, payload, chain, items))


@contextlib.asynccontextmanager
async def unit_of_work(
    pool: asyncpg.Pool, on_commit: Callable[[], None] | None = None
) -> AsyncIterator[UnitOfWork]:
    """One transaction: the block's changes and its outbox messages commit together
    (or not at all), and `on_commit` (the relay's wake-up) runs once they did."""
    async with connection(pool) as conn, transaction(conn, on_commit) as work:
        yield work


@contextlib.asynccontextmanager
async def transaction(
    conn: asyncpg.Connection, on_commit: Callable[[], None] | None = None
) -> AsyncIterator[UnitOfWork]:
    """A unit of work on a connection the caller holds (one that keeps a session
    lock or a temporary table across several transactions, say)."""
    async with conn.transaction():
        work = UnitOfWork(conn)
        yield work
        await enqueue(conn, work.messages)
    if work.messages and on_commit is not None:
        on_commit()
