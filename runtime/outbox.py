"""Reliable calls to other services: a transactional outbox and its relay.

A service writes the call it must make (topic + serialized request) into its
own `outbox` table in the same transaction as the change that needs it. The
relay claims due rows with FOR UPDATE SKIP LOCKED under a lease (so several
replicas share the work and a crashed one's claims come back), sends them as
raw bytes, deletes them once the callee accepted, and otherwise backs off
exponentially. Nothing is dropped: a row stays until its call succeeds.
Receivers are idempotent (event ids, request ids), so a retry is harmless.
A relay claims only the topics it has a destination for, so during a rolling
deploy an older replica leaves a newer topic to the replicas that know it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import grpc

from runtime.clients import ServiceClients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """Where the messages of a topic go."""

    service: str
    # Full method path, e.g. "/lifecycle.metrics.v1.MetricsService/RecordEvents".
    method: str
    # True when the request message has only repeated fields: the concatenated
    # bytes of several payloads then parse as one request holding all of them.
    mergeable: bool = False
    max_batch: int = 1000


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    attempts: int


async def enqueue(conn: asyncpg.Connection, messages: Sequence[tuple[str, bytes]]) -> None:
    """Adds messages to the outbox, inside the caller's transaction."""
    if messages:
        await conn.execute(
            "INSERT INTO outbox (topic, payload) SELECT * FROM unnest($1::text[], $2::bytea[])",
            [topic for topic, _ in messages],
            [payload for _, payload in messages],
        )


_CLAIM = """
WITH due AS (
  SELECT id FROM outbox WHERE available_at <= now() AND topic = ANY($3::text[])
  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET available_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.topic, o.payload, o.attempts
"""


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clients: ServiceClients,
        destinations: Mapping[str, Destination],
        *,
        poll_interval: float = 1.0,
        batch_size: int = 1000,
        lease_seconds: float = 30.0,
        max_backoff_seconds: float = 60.0,
    ) -> None:
        self.name = "outbox-relay"
        self._pool = pool
        self._clients = clients
        self._destinations = dict(destinations)
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._lease = lease_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Asks for a delivery round now (called after a commit that added messages)."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                claimed = await self.relay_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("outbox relay could not reach the database: %s", error)
                claimed = 0
            if claimed >= self._batch_size:
                continue
            self._wake.clear()
            waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stopping.wait())]
            await asyncio.wait(
                waits, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in waits:
                task.cancel()

    async def relay_once(self) -> int:
        """One round: claim due rows, deliver them, record the outcome. Returns rows claimed."""
        rows = [
            OutboxRow(r["id"], r["topic"], r["payload"], r["attempts"])
            for r in await self._pool.fetch(
                _CLAIM, self._batch_size, self._lease, list(self._destinations)
            )
        ]
        by_topic: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            by_topic[row.topic].append(row)
        outcomes = await asyncio.gather(
            *(
                self._deliver(topic, batch)
                for topic, batch in by_topic.items()
                for batch in self._batches(topic, batch)
            )
        )
        delivered = [row.id for ok, batch, _ in outcomes if ok for row in batch]
        if delivered:
            await self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", delivered)
        for ok, batch, error in outcomes:
            if not ok:
                await self._reschedule(batch, error)
        return len(rows)

    def _batches(self, topic: str, rows: list[OutboxRow]) -> Iterable[list[OutboxRow]]:
        destination = self._destinations[topic]
        size = destination.max_batch if destination.mergeable else 1
        return (rows[i : i + size] for i in range(0, len(rows), size))

    async def _deliver(
        self, topic: str, batch: list[OutboxRow]
    ) -> tuple[bool, list[OutboxRow], str]:
        destination = self._destinations[topic]
        # Payloads are serialized requests already; the answer is not needed.
        call = self._clients.channel(destination.service).unary_unary(
            destination.method, request_serializer=None, response_deserializer=None
        )
        try:
            await call(b"".join(row.payload for row in batch), timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            return False, batch, f"{error.code().name}: {error.details()}"
        return True, batch, ""

    async def _reschedule(self, batch: list[OutboxRow], error: str) -> None:
        attempts = max(row.attempts for row in batch)
        delay = min(self._max_backoff, 0.5 * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
        log.warning(
            "outbox delivery failed (%s, %d messages, attempt %d, next in %.1fs): %s",
            batch[0].topic,
            len(batch),
            attempts,
            delay,
            error,
        )
        await self._pool.execute(
            "UPDATE outbox SET available_at = now() + make_interval(secs => $2), last_error = $3 "
            "WHERE id = ANY($1::bigint[])",
            [row.id for row in batch],
            delay,
            error,
        )
