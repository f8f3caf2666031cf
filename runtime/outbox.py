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
Each message keeps the actors of the change that wrote it (runtime.identity),
and the relay calls on their behalf: only messages of the same chain merge.

A callee that is down, overloaded or not deployed yet is retried for as long
as it takes. A callee that refuses a message for its content (INVALID_ARGUMENT,
FAILED_PRECONDITION, NOT_FOUND, ...) is retried `max_refusals` times, then the
message moves to `outbox_dead_letters`, where it is kept, out of the way, until
an operator sends it again (`lifecycle outbox retry`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from runtime.chains import Chain, as_json, stored
from runtime.clients import ServiceClients
from runtime.identity import acting_for, calling_as
from runtime.telemetry import current_traceparent, linked_span
from runtime.wire import fields
from runtime.worker import Pause, PollingWorker, doubling

log = logging.getLogger(__name__)

# A merged call stops growing at this many bytes (the callees take 32 MiB): a
# topic whose messages are large still goes through, a few per call.
MAX_CALL_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Destination:
    """Where the messages of a topic go."""

    service: str
    # Full method path, e.g. "/lifecycle.metrics.v1.MetricsService/RecordEvents".
    method: str
    # True when the request message has only repeated fields: the concatenated
    # bytes of several payloads then parse as one request holding all of them.
    mergeable: bool = False
    # Items a merged call holds at most (the callee's limit on its repeated field).
    max_batch: int = 1000
    # For a callee that answers a merged call with the items it refused instead
    # of an error status: their positions in the call, with why.
    refused_items: Callable[[bytes], dict[int, str]] | None = None


class Message(NamedTuple):
    """A call to make: its topic, its request, and the actors it is made for."""

    topic: str
    payload: bytes
    actors: Chain
    # The items of a mergeable request the payload holds (its repeated fields' values).
    items: int = 1


class MergedMessages:
    """Items of one mergeable topic (each a one-item request, runtime.wire)
    gathered into messages of at most `per_message` items, one chain of actors
    each: a thousand events make one row, not a thousand."""

    def __init__(self, topic: str, per_message: int) -> None:
        self._topic = topic
        self._per_message = per_message
        self._items: dict[Chain, list[bytes]] = defaultdict(list)

    def add(self, item: bytes, actors: Chain) -> None:
        self._items[actors].append(item)

    def __iter__(self) -> Iterator[Message]:
        size = self._per_message
        for chain, items in self._items.items():
            for start in range(0, len(items), size):
                part = items[start : start + size]
                yield Message(self._topic, b"".join(part), chain, len(part))


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    attempts: int
    # The trace of the request that wrote the message.
    traceparent: str | None = None
    # The actors the call is made for.
    actors: Chain = ()
    items: int = 1


async def enqueue(conn: asyncpg.Connection, messages: Sequence[Message]) -> None:
    """Adds messages to the outbox, inside the caller's transaction, with the
    current trace, so that the calls the relay makes later join it."""
    if messages:
        await conn.execute(
            "INSERT INTO outbox (topic, payload, traceparent, actors, items)"
            f" SELECT topic, payload, $3, {stored('actors::jsonb')}, items"
            " FROM unnest($1::text[], $2::bytea[], $4::text[], $5::int[])"
            " AS m(topic, payload, actors, items)",
            [message.topic for message in messages],
            [message.payload for message in messages],
            current_traceparent(),
            as_json(message.actors for message in messages),
            [message.items for message in messages],
        )


# A callee's answers about the content of a request, as opposed to its availability.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


@dataclass(frozen=True)
class _Outcome:
    rows: list[OutboxRow]
    error: str = ""
    refused: bool = False
    # A row of several items some of which were refused keeps only those: its
    # new payload, and how many items that is.
    kept: tuple[bytes, int] | None = None

    @property
    def delivered(self) -> bool:
        return not self.error

    @property
    def unavailable(self) -> bool:
        """The callee could not be reached or did not answer (as opposed to refusing)."""
        return bool(self.error) and not self.refused


_CLAIM = """
WITH due AS (
  SELECT id FROM outbox WHERE available_at <= now() AND topic = ANY($3::text[])
  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET available_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.topic, o.payload, o.attempts, o.traceparent, o.actors, o.items
"""


class OutboxRelay(PollingWorker):
    name = "outbox-relay"

    def __init__(
        self,
        pool: asyncpg.Pool,
        clients: ServiceClients,
        destinations: Mapping[str, Destination],
        *,
        service: str,
        poll_interval: float = 1.0,
        batch_size: int = 1000,
        lease_seconds: float = 30.0,
        max_backoff_seconds: float = 60.0,
        max_refusals: int = 10,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        super().__init__(poll_interval)
        # The service whose outbox this is, which makes the calls.
        self._service = service
        self._pool = pool
        self._clients = clients
        self._destinations = dict(destinations)
        self._batch_size = batch_size
        self._lease = lease_seconds
        self._max_backoff = max_backoff_seconds
        self._max_refusals = max_refusals
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        # A topic whose callee is down rests, backing off, instead of having every
        # one of its messages tried and rescheduled on every round.
        self._down_rounds: dict[str, int] = defaultdict(int)
        self._resting_until: dict[str, float] = {}

    async def round(self) -> Pause:
        claimed = await self.relay_once()
        return 0 if claimed >= self._batch_size else self.poll_interval

    async def relay_once(self) -> int:
        """One round: claim due rows, deliver them, record the outcome. Returns rows claimed."""
        now = asyncio.get_running_loop().time()
        topics = [t for t in self._destinations if self._resting_until.get(t, 0.0) <= now]
        if not topics:
            return 0
        rows = [
            OutboxRow(
                r["id"],
                r["topic"],
                r["payload"],
                r["attempts"],
                r["traceparent"],
                tuple(r["actors"]),
                r["items"],
            )
            for r in await self._pool.fetch(_CLAIM, self._batch_size, self._lease, topics)
        ]
        by_topic: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            by_topic[row.topic].append(row)
        outcomes = [
            outcome
            for outcomes in await asyncio.gather(
                *(self._deliver_topic(topic, claimed) for topic, claimed in by_topic.items())
            )
            for outcome in outcomes
        ]
        delivered = [row.id for outcome in outcomes if outcome.delivered for row in outcome.rows]
        if delivered:
            await self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", delivered)
        failed = [outcome for outcome in outcomes if not outcome.delivered]
        buried = [
            outcome
            for outcome in failed
            if outcome.refused and max(r.attempts for r in outcome.rows) >= self._max_refusals
        ]
        for outcome in buried:
            await self._bury(outcome)
        await self._reschedule([outcome for outcome in failed if outcome not in buried])
        return len(rows)

    async def _deliver_topic(self, topic: str, rows: list[OutboxRow]) -> list[_Outcome]:
        """The first batch probes the callee; when it cannot be reached, the others
        are not sent this round, and the topic rests."""
        first, *others = self._batches(topic, rows)
        probe = await self._deliver(topic, first)
        if any(outcome.unavailable for outcome in probe):
            self._rest(topic)
            return probe + [_Outcome(batch, probe[0].error) for batch in others]
        self._down_rounds.pop(topic, None)
        sent = await asyncio.gather(*(self._deliver(topic, batch) for batch in others))
        return probe + [outcome for outcomes in sent for outcome in outcomes]

    def _rest(self, topic: str) -> None:
        self._down_rounds[topic] += 1
        pause = self._backoff(self._down_rounds[topic])
        self._resting_until[topic] = asyncio.get_running_loop().time() + pause

    def _batches(self, topic: str, rows: list[OutboxRow]) -> list[list[OutboxRow]]:
        """Rows merge with rows of the same chain only (a call acts for one chain),
        up to the destination's items and MAX_CALL_BYTES a call."""
        destination = self._destinations[topic]
        by_chain: dict[Chain, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            by_chain[row.actors].append(row)
        if not destination.mergeable:
            return [[row] for same in by_chain.values() for row in same]
        batches: list[list[OutboxRow]] = []
        for same in by_chain.values():
            batch: list[OutboxRow] = []
            items = size = 0
            for row in same:
                if batch and (
                    items + row.items > destination.max_batch
                    or size + len(row.payload) > MAX_CALL_BYTES
                ):
                    batches.append(batch)
                    batch, items, size = [], 0, 0
                batch.append(row)
                items += row.items
                size += len(row.payload)
            batches.append(batch)
        return batches

    async def _deliver(self, topic: str, batch: list[OutboxRow]) -> list[_Outcome]:
        """Sends a batch as one call. When the callee refuses a merged batch for what
        is in it, each message is sent alone, so that one bad message does not hold
        back the others; when the merged call outran its deadline, its halves go
        one after the other, so that no batch is too large to ever get through
        (receivers are idempotent: what the first call stored is not stored twice)."""
        destination = self._destinations[topic]
        # Payloads are serialized requests already; the answer is read only for
        # the items it refused.
        call = self._clients.channel(destination.service).unary_unary(
            destination.method, request_serializer=None, response_deserializer=None
        )
        try:
            with (
                linked_span(
                    self._tracer,
                    f"outbox {topic}",
                    [row.traceparent for row in batch],
                    kind=trace.SpanKind.PRODUCER,
                    attributes={"messaging.batch.message_count": len(batch)},
                ),
                calling_as(acting_for(self._service, batch[0].actors)),
            ):
                answer = await call(
                    b"".join(row.payload for row in batch), timeout=self._clients.timeout()
                )
        except grpc.aio.AioRpcError as error:
            refused = error.code() in _REFUSALS
            if len(batch) > 1 and refused:
                alone = await asyncio.gather(*(self._deliver(topic, [row]) for row in batch))
                return [outcome for outcomes in alone for outcome in outcomes]
            if len(batch) > 1 and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                half = len(batch) // 2
                return [
                    *await self._deliver(topic, batch[:half]),
                    *await self._deliver(topic, batch[half:]),
                ]
            return [_Outcome(batch, f"{error.code().name}: {error.details()}", refused)]
        if destination.refused_items is None:
            return [_Outcome(batch)]
        refusals = destination.refused_items(answer)
        return [_item_outcome(row, first, refusals) for row, first in _first_items(batch)]

    async def _bury(self, outcome: _Outcome) -> None:
        payload, items = outcome.kept or (None, None)
        log.error(
            "outbox message refused %d times, moved to outbox_dead_letters (%s): %s",
            self._max_refusals,
            outcome.rows[0].topic,
            outcome.error,
        )
        await self._pool.execute(
            "WITH dead AS (DELETE FROM outbox WHERE id = ANY($1::bigint[])"
            " RETURNING id, topic, payload, created_at, attempts, traceparent, actors, items)"
            " INSERT INTO outbox_dead_letters"
            " (id, topic, payload, created_at, attempts, last_error, traceparent, actors, items)"
            " SELECT id, topic, coalesce($3, payload), created_at, attempts, $2, traceparent,"
            " actors, coalesce($4, items) FROM dead",
            [row.id for row in outcome.rows],
            outcome.error,
            payload,
            items,
        )

    async def _reschedule(self, failed: list[_Outcome]) -> None:
        """Backs off every row that failed this round, in one statement: a callee
        that is down costs one update per round, not one per message."""
        if not failed:
            return
        rows = [(row, outcome.error) for outcome in failed for row in outcome.rows]
        kept = {outcome.rows[0].id: outcome.kept for outcome in failed if outcome.kept}
        delays = [self._backoff(row.attempts) for row, _ in rows]
        by_topic: dict[str, list[str]] = defaultdict(list)
        for row, error in rows:
            by_topic[row.topic].append(error)
        for topic, errors in by_topic.items():
            log.warning(
                "outbox delivery failed (%s, %d messages, attempt %d): %s",
                topic,
                len(errors),
                max(row.attempts for row, _ in rows if row.topic == topic),
                errors[-1],
            )
        await self._pool.execute(
            "UPDATE outbox o SET available_at = now() + make_interval(secs => f.delay),"
            " last_error = f.error, payload = coalesce(f.payload, o.payload),"
            " items = coalesce(f.items, o.items)"
            " FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::bytea[], $5::int[])"
            " AS f(id, delay, error, payload, items)"
            " WHERE o.id = f.id",
            [row.id for row, _ in rows],
            delays,
            [error for _, error in rows],
            [kept[row.id][0] if row.id in kept else None for row, _ in rows],
            [kept[row.id][1] if row.id in kept else None for row, _ in rows],
        )

    def _backoff(self, attempts: int) -> float:
        """Seconds until the next attempt: doubling from half a second, capped, with jitter."""
        return doubling(attempts, 0.5, self._max_backoff)


def _first_items(batch: list[OutboxRow]) -> Iterator[tuple[OutboxRow, int]]:
    """Each row of a merged call with the position of its first item in the call."""
    first = 0
    for row in batch:
        yield row, first
        first += row.items


def _item_outcome(row: OutboxRow, first: int, refusals: Mapping[int, str]) -> _Outcome:
    """A row's outcome from the items the callee refused: delivered when none of
    its items were; otherwise it keeps only those, for the next attempt and, in
    the end, the dead letters (the others were delivered)."""
    refused = [refusals[n] for n in range(first, first + row.items) if n in refusals]
    if not refused:
        return _Outcome([row])
    if len(refused) == row.items:
        return _Outcome([row], refused[0], refused=True)
    kept = [item for n, item in enumerate(fields(row.payload), first) if n in refusals]
    return _Outcome([row], refused[0], refused=True, kept=(b"".join(kept), len(kept)))


async def retry_dead_letters(conn: asyncpg.Connection, topic: str | None = None) -> int:
    """Sends dead letters again (all, or one topic's) once their cause is fixed."""
    moved = await conn.fetchval(
        "WITH revived AS (DELETE FROM outbox_dead_letters WHERE $1::text IS NULL OR topic = $1"
        " RETURNING topic, payload, created_at, traceparent, actors, items),"
        " requeued AS (INSERT INTO outbox (topic, payload, created_at, traceparent, actors, items)"
        " SELECT topic, payload, created_at, traceparent, actors, items FROM revived RETURNING 1)"
        " SELECT count(*) FROM requeued",
        topic,
    )
    return int(moved)
