"""What a service owes other services and has not delivered yet, and sending
its dead letters again: `lifecycle outbox` reads it from the database, and
every service serves it as lifecycle.operations.v1.OperationsService.

The outbox rows are counted per topic (pending and dead), and a service adds
what else it keeps waiting with its `waiting` query (ServiceDefinition).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from lifecycle.operations.v1 import operations_pb2 as pb
from lifecycle.operations.v1 import operations_pb2_grpc
from runtime.database import connection
from runtime.errors import NotFound
from runtime.outbox import Destination, retry_dead_letters
from runtime.structs import timestamp

Context = grpc.aio.ServicerContext[Any, Any]

# An error is cut to this many characters: a reply of every topic stays small.
MAX_ERROR_CHARS = 300
_CUT = "…"

# Per topic: the pending messages (the last error of the one tried most) and
# the dead letters (the newest one's error); one row per topic and kind. A row
# may hold many items of a mergeable request (outbox.items): they are counted.
_OUTBOX = """
SELECT 'pending' AS kind, topic, sum(items) AS messages, min(created_at) AS oldest,
       max(attempts) AS attempts,
       (SELECT o.last_error FROM outbox o
        WHERE o.topic = p.topic AND o.last_error IS NOT NULL
        ORDER BY o.attempts DESC, o.available_at DESC LIMIT 1) AS last_error
FROM outbox p GROUP BY topic
UNION ALL
SELECT 'dead', topic, sum(items), min(created_at), max(attempts),
       (SELECT d.last_error FROM outbox_dead_letters d
        WHERE d.topic = l.topic ORDER BY d.dead_at DESC, d.id DESC LIMIT 1)
FROM outbox_dead_letters l GROUP BY topic
"""


@dataclass(frozen=True)
class Waiting:
    """Calls of one kind ("pending", "dead", "incident") and topic that wait."""

    kind: str
    topic: str
    messages: int
    # When the oldest was written, and how long ago by the database's clock.
    oldest: datetime | None
    age: timedelta | None
    attempts: int
    last_error: str


@dataclass(frozen=True)
class WaitingReport:
    """What waits in a service: its outbox's topics and its own queues (`elsewhere`)."""

    read_at: datetime
    outbox: list[Waiting]
    elsewhere: list[Waiting]

    @property
    def rows(self) -> list[Waiting]:
        return [*self.outbox, *self.elsewhere]


def _waiting(rows: list[asyncpg.Record]) -> list[Waiting]:
    return [
        Waiting(
            kind=row["kind"],
            topic=row["topic"],
            messages=row["messages"],
            oldest=row["oldest"],
            age=row["age"],
            attempts=row["attempts"] or 0,
            last_error=_cut(row["last_error"] or ""),
        )
        for row in rows
    ]


def _cut(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + _CUT


def _aged(query: str, attempts: str) -> str:
    """A query giving (kind, topic, messages, oldest, last_error[, attempts]), with
    each row's age and its error cut in SQL (an error may be long)."""
    return (
        f"SELECT kind, topic, messages, oldest, now() - oldest AS age, {attempts} AS attempts,"
        f" left(last_error, $1 + 1) AS last_error FROM ({query}) AS w ORDER BY kind, topic"
    )


async def waiting_report(conn: asyncpg.Connection, elsewhere: str | None) -> WaitingReport:
    """What waits in the service whose schema `conn` works in; `elsewhere` is its
    `waiting` query (rows of kind, topic, messages, oldest, last_error)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        read_at = await conn.fetchval("SELECT now()")
        outbox = await conn.fetch(_aged(_OUTBOX, "attempts"), MAX_ERROR_CHARS)
        others = await conn.fetch(_aged(elsewhere, "0"), MAX_ERROR_CHARS) if elsewhere else []
    return WaitingReport(read_at, _waiting(outbox), _waiting(others))


# ------------------------------------------------------------ the RPCs


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if moment is None else timestamp(moment)


def _duration(age: timedelta | None) -> duration_pb2.Duration | None:
    if age is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(max(age, timedelta()))
    return duration


def outbox_topics(
    report: WaitingReport, destinations: Mapping[str, Destination]
) -> list[pb.OutboxTopic]:
    """A topic per destination and per topic the outbox holds, by name."""
    by_kind = {(row.kind, row.topic): row for row in report.outbox}
    topics = sorted({*destinations, *(row.topic for row in report.outbox)})
    answer = []
    for topic in topics:
        pending, dead = by_kind.get(("pending", topic)), by_kind.get(("dead", topic))
        destination = destinations.get(topic)
        answer.append(
            pb.OutboxTopic(
                topic=topic,
                callee=destination.service if destination else "",
                pending=pending.messages if pending else 0,
                oldest_pending_time=_timestamp(pending.oldest if pending else None),
                oldest_pending_age=_duration(pending.age if pending else None),
                attempts=pending.attempts if pending else 0,
                last_error=pending.last_error if pending else "",
                dead_letters=dead.messages if dead else 0,
                dead_letter_error=dead.last_error if dead else "",
            )
        )
    return answer


def waiting_calls(report: WaitingReport) -> list[pb.WaitingCalls]:
    return [
        pb.WaitingCalls(
            kind=row.kind,
            topic=row.topic,
            calls=row.messages,
            oldest_time=_timestamp(row.oldest),
            oldest_age=_duration(row.age),
            last_error=row.last_error,
        )
        for row in report.elsewhere
    ]


def unknown_topic(topic: str, service: str) -> NotFound:
    return NotFound(
        f"topic {topic!r} is not a topic the {service} service sends",
        reason="TOPIC_NOT_FOUND",
        metadata={"topic": topic},
    )


class OperationsServicer(operations_pb2_grpc.OperationsServiceServicer):
    """The service's outbox over the API; the same reads and moves as the CLI's."""

    def __init__(
        self,
        service: str,
        pool: asyncpg.Pool,
        destinations: Mapping[str, Destination],
        waiting: str | None,
        wake_relay: Callable[[], None],
    ) -> None:
        self._service = service
        self._pool = pool
        self._destinations = dict(destinations)
        self._waiting = waiting
        # Dead letters moved back are sent at once, not at the relay's next round.
        self._wake_relay = wake_relay

    async def GetOutbox(
        self, request: pb.GetOutboxRequest, context: Context
    ) -> pb.GetOutboxResponse:
        async with connection(self._pool) as conn:
            report = await waiting_report(conn, self._waiting)
        return pb.GetOutboxResponse(
            service=self._service,
            topics=outbox_topics(report, self._destinations),
            elsewhere=waiting_calls(report),
            read_time=_timestamp(report.read_at),
        )

    async def RetryDeadLetters(
        self,
        request: pb.RetryDeadLettersRequest,
        context: Context,
    ) -> pb.RetryDeadLettersResponse:
        topic = request.topic or None
        if topic is not None and topic not in self._destinations:
            raise unknown_topic(topic, self._service)
        async with connection(self._pool) as conn:
            retried = await retry_dead_letters(conn, topic)
        if retried:
            self._wake_relay()
        return pb.RetryDeadLettersResponse(retried=retried)
