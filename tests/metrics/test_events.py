"""The event log against a real metrics server and PostgreSQL: RecordEvents
(idempotent, validated, refusing what it cannot store while storing the rest),
ListEvents (filters, pages, partition pruning) and EraseUserData."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest

from lifecycle.metrics.v1 import metrics_pb2
from runtime.clients import ServiceClients
from runtime.clock import ManualClock
from runtime.database import unit_of_work
from runtime.lifecycle_events import DESTINATIONS, RECORD_EVENTS
from runtime.outbox import OutboxRelay
from services.metrics.domain import EventFilter
from services.metrics.store import list_events_query
from tests.metrics.conftest import (
    MetricsServer,
    as_metrics,
    create_partitions,
    event,
    serve_metrics,
)
from tests.support import ScratchDatabase, error_info, rpc_error, violated_fields

NOW = datetime.now(UTC).replace(microsecond=123456)


@pytest.fixture(scope="module")
async def server(database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    async with serve_metrics(database, ManualClock(NOW)) as server:
        yield server


def record(*events: metrics_pb2.LifecycleEvent) -> metrics_pb2.RecordEventsRequest:
    return metrics_pb2.RecordEventsRequest(events=list(events))


async def events_of(server: MetricsServer, user_id: uuid.UUID) -> list[metrics_pb2.LifecycleEvent]:
    reply = await server.stub.ListEvents(metrics_pb2.ListEventsRequest(user_id=str(user_id)))
    return list(reply.events)


async def test_an_event_sent_twice_is_stored_once_and_reads_back_as_sent(
    server: MetricsServer,
) -> None:
    user = uuid.uuid4()
    execution = uuid.uuid4()
    sent = [
        event(
            "user.created",
            NOW - timedelta(minutes=3),
            user_id=user,
            stage="Acquisition",
            data={"source": "api"},
            producer="users",
        ),
        event(
            "user.stage_changed",
            NOW - timedelta(minutes=2),
            user_id=user,
            stage="Activation",
            data={"from_stage": "Acquisition", "to_stage": "Activation", "transition_id": 7},
            execution_id=execution,
            producer="users",
        ),
        event(
            "tracked.signup",
            NOW - timedelta(minutes=1),
            user_id=user,
            stage="Activation",
            data={"plan": "pro", "nested": {"a": [1, "x", None, True]}},
            producer="triggers",
        ),
    ]
    # Two outbox payloads merged by the relay parse as one request.
    merged = metrics_pb2.RecordEventsRequest.FromString(
        record(*sent[:2]).SerializeToString() + record(sent[2]).SerializeToString()
    )
    first = await server.stub.RecordEvents(merged)
    again = await server.stub.RecordEvents(record(*sent))
    assert (first.recorded_count, first.duplicate_count) == (3, 0)
    assert (again.recorded_count, again.duplicate_count) == (0, 3)
    assert await events_of(server, user) == list(reversed(sent))


def changed(message: metrics_pb2.LifecycleEvent, **fields: object) -> metrics_pb2.LifecycleEvent:
    """The event with fields set past the factory's typing (bad values on purpose)."""
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _bad_events(user: uuid.UUID) -> list[tuple[str, metrics_pb2.LifecycleEvent]]:
    at = NOW - timedelta(minutes=5)
    missing_time = event("tracked.x", at, user_id=user)
    missing_time.ClearField("event_time")
    return [
        ("event_id", event("tracked.x", at, user_id=user, event_id="not-a-uuid")),
        ("event_type", event("user.deleted", at, user_id=user)),
        ("event_type", event("tracked.", at, user_id=user)),
        ("user_id", event("tracked.x", at, user_id="42")),
        ("user_id", event("user.created", at, stage="Acquisition")),
        (
            "workflow_execution_id",
            changed(event("execution.started", at, user_id=user), workflow_execution_id="nope"),
        ),
        ("lifecycle_stage", changed(event("tracked.x", at, user_id=user), lifecycle_stage=9)),
        (
            "lifecycle_stage",
            event("user.stage_changed", at, user_id=user, data={"from_stage": "Acquisition"}),
        ),
        (
            "data.from_stage",
            event(
                "user.stage_changed",
                at,
                user_id=user,
                stage="Activation",
                data={"from_stage": "Nowhere"},
            ),
        ),
        ("producer", event("tracked.x", at, user_id=user, producer="")),
        ("event_time", missing_time),
        ("data", event("tracked.x", at, user_id=user, data={"blob": "x" * 70_000})),
        ("data.nul", event("tracked.x", at, user_id=user, data={"nul": "a\x00b"})),
        ("event_type", event("tracked.a\x00b", at, user_id=user)),
        ("producer", event("tracked.x", at, user_id=user, producer="a\x00b")),
        (
            "data.from_stage",
            event(
                "user.stage_changed",
                at,
                user_id=user,
                stage="Activation",
                data={"from_stage": ["Acquisition"]},
            ),
        ),
    ]


BAD_EVENTS = len(_bad_events(uuid.uuid4()))


@pytest.mark.parametrize("case", range(BAD_EVENTS))
async def test_a_malformed_event_is_refused_by_field_and_the_valid_ones_are_stored(
    server: MetricsServer, case: int
) -> None:
    user = uuid.uuid4()
    field, bad = _bad_events(user)[case]
    good = event("tracked.ok", NOW - timedelta(minutes=4), user_id=user, stage="Retention")
    error = await rpc_error(server.stub.RecordEvents(record(good, bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error)[0] == f"events[1].{field}"
    assert error_info(error).reason == "INVALID_EVENTS"
    assert [e.event_id for e in await events_of(server, user)] == [good.event_id]
    retry = await rpc_error(server.stub.RecordEvents(record(good, bad)))
    assert "1 already were" in str(retry.details())
    assert len(await events_of(server, user)) == 1


async def test_an_event_outside_the_partitions_is_refused_loudly_until_its_partition_exists(
    server: MetricsServer, database: ScratchDatabase
) -> None:
    user = uuid.uuid4()
    good = event("tracked.ok", NOW, user_id=user)
    old = event("tracked.old", datetime(2001, 6, 15, tzinfo=UTC), user_id=user)
    error = await rpc_error(server.stub.RecordEvents(record(good, old)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info.reason == "EVENT_OUTSIDE_PARTITIONS"
    assert info.metadata["event_ids"] == old.event_id
    details = str(error.details())
    assert old.event_id in details and "lifecycle_events_2001_06" in details
    assert [e.event_id for e in await events_of(server, user)] == [good.event_id]

    await create_partitions(database, date(2001, 6, 15))
    reply = await server.stub.RecordEvents(record(good, old))
    assert (reply.recorded_count, reply.duplicate_count) == (1, 1)
    assert [e.event_id for e in await events_of(server, user)] == [good.event_id, old.event_id]


async def test_a_permanently_bad_event_does_not_hold_back_the_events_batched_with_it(
    server: MetricsServer,
) -> None:
    """The relay merges outbox rows into one call; refused, it sends them one by
    one: the valid events are stored and leave the producer's outbox, the bad one
    stays there with an error naming it, and retries store nothing twice."""
    users = [uuid.uuid4() for _ in range(3)]
    payloads = [
        record(event("tracked.a", NOW, user_id=users[0])),
        record(event("tracked.b", NOW, user_id=users[1], event_id="bad-id")),
        record(event("tracked.c", NOW, user_id=users[2])),
    ]
    pool = server.pool
    topic_rows = "SELECT payload, attempts, last_error FROM outbox WHERE topic = $1"
    clients = ServiceClients({"metrics": server.host.address}, default_timeout=2.0)
    relay = OutboxRelay(
        pool, clients, {RECORD_EVENTS: DESTINATIONS[RECORD_EVENTS]}, service="metrics"
    )
    try:
        async with unit_of_work(pool) as work:
            for payload in payloads:
                work.publish(RECORD_EVENTS, payload.SerializeToString())
        for _ in range(2):
            await pool.execute(
                "UPDATE outbox SET available_at = now() WHERE topic = $1", RECORD_EVENTS
            )
            await relay.relay_once()
        [row] = await pool.fetch(topic_rows, RECORD_EVENTS)
        [left] = metrics_pb2.RecordEventsRequest.FromString(row["payload"]).events
        assert left.event_id == "bad-id"
        assert "events[0].event_id" in row["last_error"]
        assert row["attempts"] == 2
        assert [len(await events_of(server, u)) for u in users] == [1, 0, 1]
    finally:
        await pool.execute("DELETE FROM outbox WHERE topic = $1", RECORD_EVENTS)
        await clients.close()


@pytest.fixture(scope="module")
async def history(
    server: MetricsServer,
) -> tuple[uuid.UUID, uuid.UUID, list[metrics_pb2.LifecycleEvent]]:
    """Twelve events of one user over twelve minutes, one with an execution."""
    user, execution = uuid.uuid4(), uuid.uuid4()
    stages = ["Acquisition", "Activation", "Retention"]
    sent = [
        event(
            f"tracked.t{n % 3}",
            NOW - timedelta(minutes=12 - n),
            user_id=user,
            stage=stages[n % 3],
            execution_id=execution if n == 4 else None,
        )
        for n in range(12)
    ]
    await server.stub.RecordEvents(record(*sent))
    return user, execution, sent


async def test_list_events_filters_newest_first(
    server: MetricsServer, history: tuple[uuid.UUID, uuid.UUID, list[metrics_pb2.LifecycleEvent]]
) -> None:
    user, execution, sent = history

    async def ids(**filters: object) -> list[str]:
        request = metrics_pb2.ListEventsRequest(user_id=str(user), **filters)  # type: ignore[arg-type]
        return [e.event_id for e in (await server.stub.ListEvents(request)).events]

    newest_first = [e.event_id for e in reversed(sent)]
    assert await ids() == newest_first
    assert await ids(event_types=["tracked.t1"]) == [
        e.event_id for e in reversed(sent) if e.event_type == "tracked.t1"
    ]
    assert await ids(lifecycle_stages=[2, 3]) == [
        e.event_id for e in reversed(sent) if e.lifecycle_stage in (2, 3)
    ]
    assert await ids(workflow_execution_id=str(execution)) == [sent[4].event_id]
    window = metrics_pb2.ListEventsRequest(user_id=str(user))
    window.start_time.CopyFrom(sent[3].event_time)
    window.end_time.CopyFrom(sent[6].event_time)
    reply = await server.stub.ListEvents(window)
    assert [e.event_id for e in reply.events] == [e.event_id for e in reversed(sent[3:6])]


async def test_list_events_pages_through_the_log_with_tokens_bound_to_the_query(
    server: MetricsServer, history: tuple[uuid.UUID, uuid.UUID, list[metrics_pb2.LifecycleEvent]]
) -> None:
    user, _, sent = history
    seen: list[str] = []
    token = ""
    while True:
        reply = await server.stub.ListEvents(
            metrics_pb2.ListEventsRequest(user_id=str(user), page_size=5, page_token=token)
        )
        seen += [e.event_id for e in reply.events]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [e.event_id for e in reversed(sent)]
    first = await server.stub.ListEvents(
        metrics_pb2.ListEventsRequest(user_id=str(user), page_size=5)
    )
    error = await rpc_error(
        server.stub.ListEvents(
            metrics_pb2.ListEventsRequest(page_size=5, page_token=first.next_page_token)
        )
    )
    assert violated_fields(error) == ["page_token"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": "x"}, "user_id"),
        ({"workflow_execution_id": "x"}, "workflow_execution_id"),
        ({"event_types": ["user.created", "nope"]}, "event_types[1]"),
        ({"lifecycle_stages": [9]}, "lifecycle_stages[0]"),
        ({"lifecycle_stages": [0]}, "lifecycle_stages"),
        ({"page_size": -1}, "page_size"),
    ],
)
async def test_list_events_refuses_bad_filters(
    server: MetricsServer, request_fields: dict[str, object], field: str
) -> None:
    error = await rpc_error(
        server.stub.ListEvents(metrics_pb2.ListEventsRequest(**request_fields))  # type: ignore[arg-type]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [field]


async def test_list_events_refuses_an_empty_time_range(server: MetricsServer) -> None:
    request = metrics_pb2.ListEventsRequest()
    request.start_time.FromDatetime(NOW)
    request.end_time.FromDatetime(NOW)
    error = await rpc_error(server.stub.ListEvents(request))
    assert violated_fields(error) == ["end_time"]


async def test_list_events_reads_only_the_partitions_of_its_time_range(
    database: ScratchDatabase,
) -> None:
    month = date(NOW.year, NOW.month, 1)
    where = EventFilter(
        event_types=("tracked.x",),
        start_time=datetime(month.year, month.month, 2, tzinfo=UTC),
        end_time=datetime(month.year, month.month, 20, tzinfo=UTC),
    )
    sql, args = list_events_query(where, None, 10)
    async with as_metrics(database) as conn:
        plan = str(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        partitions = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'lifecycle_events'::regclass"
            )
        ]
    scanned = {name for name in partitions if f'"{name}"' in plan}
    assert scanned == {f"lifecycle_events_{month.year:04d}_{month.month:02d}"}
    assert len(partitions) > 3


async def test_erasing_a_user_removes_their_events_and_drops_later_ones(
    server: MetricsServer, database: ScratchDatabase
) -> None:
    user, other, execution = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await server.stub.RecordEvents(
        record(
            event(
                "user.created",
                NOW - timedelta(minutes=5),
                user_id=user,
                stage="Acquisition",
                data={"source": "api"},
            ),
            event(
                "user.stage_changed",
                NOW - timedelta(minutes=4),
                user_id=user,
                stage="Activation",
                data={"from_stage": "Acquisition", "metadata": {"by": "x"}},
            ),
            event(
                "tracked.purchase",
                NOW - timedelta(minutes=3),
                user_id=user,
                stage="Activation",
                data={"email": "alice@example.com", "message_id": "m-1"},
            ),
            event(
                "execution.started",
                NOW - timedelta(minutes=2),
                user_id=user,
                execution_id=execution,
                data={"workflow_id": "w-1"},
            ),
            event("tracked.purchase", NOW - timedelta(minutes=1), user_id=other),
        )
    )
    async with as_metrics(database) as conn:
        kept_before = await conn.fetchval("SELECT count(*) FROM erased_events")
    reply = await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(user)))
    assert reply.erased_count == 4
    assert await events_of(server, user) == []
    assert len(await events_of(server, other)) == 1
    async with as_metrics(database) as conn:
        naming = await conn.fetchval(
            "SELECT count(*) FROM lifecycle_events t WHERE t.user_id = $1"
            " OR t.workflow_execution_id = $2 OR t::text LIKE '%' || $1::text || '%'"
            " OR t::text LIKE '%alice%' OR t::text LIKE '%m-1%'",
            user,
            execution,
        )
        kept = await conn.fetch("SELECT t::text AS row FROM erased_events t")
    assert naming == 0
    # What the daily metrics count of the four events, and nothing of the user.
    assert len(kept) == kept_before + 4
    assert not [r for r in kept if str(user) in r["row"] or str(execution) in r["row"]]
    assert not [r for r in kept if "alice" in r["row"] or "m-1" in r["row"]]

    late = await server.stub.RecordEvents(
        record(event("tracked.purchase", NOW, user_id=user), event("tracked.x", NOW, user_id=other))
    )
    assert (late.recorded_count, late.erased_user_count) == (1, 1)
    assert await events_of(server, user) == []
    again = await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(user)))
    assert again.erased_count == 0


async def test_erase_refuses_a_malformed_user_id(server: MetricsServer) -> None:
    error = await rpc_error(server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["user_id"]


async def test_an_empty_batch_records_nothing(server: MetricsServer) -> None:
    reply = await server.stub.RecordEvents(metrics_pb2.RecordEventsRequest())
    assert (reply.recorded_count, reply.duplicate_count) == (0, 0)
