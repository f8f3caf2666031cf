"""Events of a user that arrive after the user's erase, against a real metrics
server and PostgreSQL, in a database of its own (populations are global): the
users service sends a user's events and its erase on different outbox topics,
so a stage move can arrive after the erase, while the anonymous `user.erased`
already takes the user out of their last stage. The move is counted
anonymously, once however often it is sent, and the populations come out as
if it had arrived before the erase."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest

from lifecycle.metrics.v1 import metrics_pb2
from runtime.clock import ManualClock
from tests.metrics.conftest import (
    MetricsServer,
    as_metrics,
    at,
    create_partitions,
    event,
    metric_rows,
    serve_metrics,
)
from tests.support import ScratchDatabase, error_info, rpc_error

D0 = date(2025, 6, 10)
D1, D2 = D0 + timedelta(days=1), D0 + timedelta(days=2)
KEPT, ERASED, ERASED_TOO = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
ON_TIME = [
    event("user.created", at(D0, 8), user_id=KEPT, stage="Acquisition"),
    event("user.created", at(D0, 10), user_id=ERASED, stage="Acquisition"),
    # What the users service sends on DeleteUser: anonymous, from the last stage.
    event("user.erased", at(D2, 12), stage="Activation"),
]
LATE_MOVE = event(
    "user.stage_changed",
    at(D1, 9),
    user_id=ERASED,
    stage="Activation",
    data={"from_stage": "Acquisition", "to_stage": "Activation"},
)
LATE_LOGIN = event("tracked.login", at(D1, 9, 30), user_id=ERASED, stage="Activation")
FLOWS = ("entries", "exits", "conversions", "net_flow", "population_eod")


@pytest.fixture(scope="module")
async def server(own_database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    await create_partitions(own_database, D0)
    async with serve_metrics(own_database, ManualClock(at(D2 + timedelta(days=1), 6))) as server:
        reply = await server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=ON_TIME))
        assert reply.recorded_count == len(ON_TIME)
        yield server


async def record(
    server: MetricsServer, *events: metrics_pb2.LifecycleEvent
) -> tuple[int, int, int]:
    reply = await server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=events))
    return reply.recorded_count, reply.duplicate_count, reply.erased_user_count


def flows(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], int]:
    """Moves and populations of the non-empty stages."""
    return {
        row[:4]: int(row[4])
        for row in rows
        if row[2] in FLOWS and row[1] in ("Acquisition", "Activation")
    }


async def test_a_stage_move_arriving_after_the_erase_is_counted_once_as_if_it_had_not_been_late(
    server: MetricsServer, own_database: ScratchDatabase
) -> None:
    async with as_metrics(own_database) as conn:
        counted_before = await conn.fetchval("SELECT count(*) FROM erased_events")
    erased = await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(ERASED)))
    assert erased.erased_count == 1

    assert await record(server, LATE_MOVE, LATE_LOGIN) == (0, 0, 2)
    assert await record(server, LATE_MOVE) == (0, 1, 0)
    assert await record(server, LATE_MOVE, LATE_MOVE) == (0, 2, 0)
    # The creation, stored before the erase, sent again after it.
    assert await record(server, ON_TIME[1]) == (0, 1, 0)
    await server.stub.RunRollup(
        metrics_pb2.RunRollupRequest(start_date=D0.isoformat(), end_date=D2.isoformat())
    )

    to_activation = '{"to_stage": "Activation"}'
    rows = await metric_rows(server.pool)
    # Had the move arrived before the erase: both users enter Acquisition on
    # D0, the erased one moves on to Activation on D1 and leaves it on D2.
    assert flows(rows) == {
        (D0, "Acquisition", "entries", "{}"): 2,
        (D0, "Acquisition", "exits", "{}"): 0,
        (D0, "Acquisition", "net_flow", "{}"): 2,
        (D0, "Acquisition", "population_eod", "{}"): 2,
        (D0, "Activation", "population_eod", "{}"): 0,
        (D1, "Acquisition", "conversions", to_activation): 1,
        (D1, "Acquisition", "entries", "{}"): 0,
        (D1, "Acquisition", "exits", "{}"): 1,
        (D1, "Acquisition", "net_flow", "{}"): -1,
        (D1, "Acquisition", "population_eod", "{}"): 1,
        (D1, "Activation", "entries", "{}"): 1,
        (D1, "Activation", "exits", "{}"): 0,
        (D1, "Activation", "net_flow", "{}"): 1,
        (D1, "Activation", "population_eod", "{}"): 1,
        (D2, "Acquisition", "population_eod", "{}"): 1,
        (D2, "Activation", "entries", "{}"): 0,
        (D2, "Activation", "exits", "{}"): 1,
        (D2, "Activation", "net_flow", "{}"): -1,
        (D2, "Activation", "population_eod", "{}"): 0,
    }
    counted = {row[:4]: row[4] for row in rows}
    assert counted[D1, "Activation", "events", '{"event_type": "user.stage_changed"}'] == 1
    assert counted[D1, "Activation", "events", '{"event_type": "tracked.login"}'] == 1
    # What is lost (docs/metrics.md): the dwell time of the late move, whose
    # previous move is no longer linked to it, and whether the late login was
    # the user's first activity of the day.
    assert (D1, "Acquisition", "time_in_stage_p50", "{}") not in counted
    assert (D1, "Activation", "active_users", "{}") not in counted

    snapshot = await server.stub.GetStageSnapshot(metrics_pb2.GetStageSnapshotRequest())
    assert [s.users for s in snapshot.stages] == [1, 0, 0, 0, 0]
    listed = await server.stub.ListEvents(metrics_pb2.ListEventsRequest(user_id=str(ERASED)))
    assert list(listed.events) == []
    async with as_metrics(own_database) as conn:
        kept = [r["row"] for r in await conn.fetch("SELECT t::text AS row FROM erased_events t")]
    assert len(kept) == counted_before + 3  # the creation, the late move and the late login
    assert not [r for r in kept if str(ERASED) in r or LATE_MOVE.event_id in r]


async def test_a_late_event_of_an_erased_user_outside_the_partitions_is_refused(
    server: MetricsServer, own_database: ScratchDatabase
) -> None:
    await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(ERASED_TOO)))
    async with as_metrics(own_database) as conn:
        counted_before = await conn.fetchval("SELECT count(*) FROM erased_events")
    far = event("tracked.login", datetime(2031, 1, 1, tzinfo=UTC), user_id=ERASED_TOO)
    inside = event("tracked.login", at(D2, 20), user_id=ERASED_TOO)
    error = await rpc_error(
        server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[inside, far]))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "EVENT_OUTSIDE_PARTITIONS"
    assert error_info(error).metadata["event_ids"] == far.event_id
    assert "lifecycle_events_2031_01 does not exist" in str(error.details())
    async with as_metrics(own_database) as conn:
        assert await conn.fetchval("SELECT count(*) FROM erased_events") == counted_before + 1
    # A retry counts nothing twice and refuses the same event again.
    again = await rpc_error(
        server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[inside, far]))
    )
    assert error_info(again).metadata["event_ids"] == far.event_id
    async with as_metrics(own_database) as conn:
        assert await conn.fetchval("SELECT count(*) FROM erased_events") == counted_before + 1
