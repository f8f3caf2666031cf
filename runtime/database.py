"""A service's connection pool and its unit of work."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import TracebackType
from typing import Any

import asyncpg

from runtime.outbox import enqueue


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, schema: str, max_size: int) -> asyncpg.Pool:
    """A pool that connects lazily, so a service starts (NOT_SERVING) while its database is down."""
    pool = await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": schema, "application_name": f"lifecycle-{schema}"},
    )
    assert pool is not None
    return pool


class UnitOfWork:
    """One transaction. Outbox messages published in it are written just before
    the commit and the relay is woken once the commit succeeded."""

    def __init__(self, pool: asyncpg.Pool, on_commit: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._on_commit = on_commit
        self._messages: list[tuple[str, bytes]] = []
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._transaction: asyncpg.transaction.Transaction | None = None

    @property
    def conn(self) -> asyncpg.Connection:
        assert self._conn is not None, "use the unit of work in `async with`"
        return self._conn  # type: ignore[return-value]

    def publish(self, topic: str, payload: bytes) -> None:
        self._messages.append((topic, payload))

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self._pool.acquire()
        try:
            self._transaction = self._conn.transaction()
            await self._transaction.start()
        except BaseException:
            await self._pool.release(self._conn)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._conn is not None and self._transaction is not None
        committed = False
        try:
            if exc_type is None:
                await enqueue(self.conn, self._messages)
                await self._transaction.commit()
                committed = True
            else:
                await self._transaction.rollback()
        finally:
            await self._pool.release(self._conn)
            self._conn = None
        if committed and self._messages and self._on_commit is not None:
            self._on_commit()
