"""A user's erase against a real metrics server and PostgreSQL, in a database of
its own: the user's events leave the log, nothing in it names them any more,
and every daily metric of the past days stays as it was through recomputation
(counts, dwell-time percentiles, distinct active users, populations), while a
late event of another user is still counted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

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
from tests.support import ScratchDatabase

D0 = date(2025, 6, 10)
BEFORE, D1, D2 = D0 - timedelta(days=1), D0 + timedelta(days=1), D0 + timedelta(days=2)
X, A, B = (uuid.uuid4() for _ in range(3))
EXECUTION = uuid.uuid4()
EMAIL = {"email": "x.person@example.com"}


def moved(user: uuid.UUID, when: Any, source: str, target: str) -> metrics_pb2.LifecycleEvent:
    data = {"from_stage": source, "to_stage": target, **(EMAIL if user == X else {})}
    return event("user.stage_changed", when, user_id=user, stage=target, data=data)


# X, the user erased, is created the day before the range, is active in two
# stages on D0 (twice in one), moves on, back and forth, beside A and B.
X_EVENTS = [
    event("user.created", at(BEFORE, 22), user_id=X, stage="Acquisition", data=EMAIL),
    event("tracked.login", at(D0, 9), user_id=X, stage="Acquisition", data=EMAIL),
    event("tracked.view", at(D0, 10), user_id=X, stage="Acquisition", data=EMAIL),
    moved(X, at(D0, 12), "Acquisition", "Activation"),
    event("tracked.purchase", at(D0, 13), user_id=X, stage="Activation", data=EMAIL),
    event(
        "execution.started",
        at(D0, 14),
        user_id=X,
        stage="Activation",
        execution_id=EXECUTION,
        data={"workflow_id": "wf-1", **EMAIL},
    ),
    event("trigger.fired", at(D1, 11), user_id=X, stage="Activation", data={"trigger_id": "tr-1"}),
    event("segment.entered", at(D1, 12), user_id=X, data={"segment_id": "seg-1"}),
    moved(X, at(D1, 15), "Activation", "Retention"),
    moved(X, at(D2, 8), "Retention", "Activation"),
    event("tracked.login", at(D2, 10), user_id=X, stage="Activation", data=EMAIL),
]
OTHERS = [
    event("user.created", at(D0, 8), user_id=A, stage="Acquisition"),
    event("tracked.login", at(D0, 11), user_id=A, stage="Acquisition"),
    moved(A, at(D1, 9), "Acquisition", "Activation"),
    event("user.created", at(D1, 10), user_id=B, stage="Activation"),
    moved(A, at(D1, 20), "Activation", "Retention"),
    event("tracked.login", at(D2, 9), user_id=B, stage="Activation"),
    # What the users service sends on DeleteUser: anonymous, from X's last stage.
    event("user.erased", at(D2, 18), stage="Activation"),
]
WINDOW = metrics_pb2.RunRollupRequest(start_date=BEFORE.isoformat(), end_date=D2.isoformat())


async def funnel(server: MetricsServer) -> list[tuple[int, float]]:
    reply = await server.stub.GetStageFunnel(
        metrics_pb2.GetStageFunnelRequest(start_date=D0.isoformat(), end_date=D2.isoformat())
    )
    return [(s.entered, round(s.conversion_rate, 3)) for s in reply.stages]


async def snapshot(server: MetricsServer) -> list[tuple[int, int]]:
    reply = await server.stub.GetStageSnapshot(metrics_pb2.GetStageSnapshotRequest())
    return [(s.lifecycle_stage, s.users) for s in reply.stages]


@pytest.fixture(scope="module")
async def server(own_database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    await create_partitions(own_database, D0, months_behind=1)
    async with serve_metrics(own_database, ManualClock(at(D2, 23))) as server:
        sent = metrics_pb2.RecordEventsRequest(events=X_EVENTS + OTHERS)
        assert (await server.stub.RecordEvents(sent)).recorded_count == len(sent.events)
        yield server


async def test_an_erase_removes_the_users_events_and_keeps_every_past_daily_metric(
    server: MetricsServer, own_database: ScratchDatabase
) -> None:
    await server.stub.RunRollup(WINDOW)
    before = await metric_rows(server.pool)
    snapshot_before = await snapshot(server)
    assert await funnel(server) == [(1, 0.0), (3, 1.0), (2, 0.667), (0, 0.0), (0, 0.0)]

    erased = await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(X)))
    assert erased.erased_count == len(X_EVENTS)

    listed = await server.stub.ListEvents(metrics_pb2.ListEventsRequest(user_id=str(X)))
    assert list(listed.events) == []
    async with as_metrics(own_database) as conn:
        log = [r["row"] for r in await conn.fetch("SELECT t::text AS row FROM lifecycle_events t")]
        kept = [r["row"] for r in await conn.fetch("SELECT t::text AS row FROM erased_events t")]
    assert len(log) == len(OTHERS)
    assert len(kept) == len(X_EVENTS)
    for rows in (log, kept):
        assert not [r for r in rows if str(X) in r or str(EXECUTION) in r or "example.com" in r]

    # Recomputed over the whole range and over a part of it (X's move on D1
    # follows one on D0), the past days' metrics are those rolled up before.
    assert (await server.stub.RunRollup(WINDOW)).rows_written == 0
    part = metrics_pb2.RunRollupRequest(start_date=D1.isoformat(), end_date=D2.isoformat())
    assert (await server.stub.RunRollup(part)).rows_written == 0
    assert await metric_rows(server.pool) == before
    assert await snapshot(server) == snapshot_before
    # The funnel counts users in the log, where X no longer is.
    assert await funnel(server) == [(1, 0.0), (2, 1.0), (1, 0.5), (0, 0.0), (0, 0.0)]

    again = await server.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(X)))
    assert again.erased_count == 0
    assert (await server.stub.RunRollup(WINDOW)).rows_written == 0


async def test_metrics_rolled_up_for_the_first_time_after_an_erase_count_the_erased_user(
    server: MetricsServer,
) -> None:
    """The population before the first day rolled up comes from the moves before
    it, X's creation among them."""
    before = await metric_rows(server.pool)
    await server.pool.execute("DELETE FROM metrics_daily")
    await server.stub.RunRollup(
        metrics_pb2.RunRollupRequest(start_date=D0.isoformat(), end_date=D2.isoformat())
    )
    await server.stub.RunRollup(
        metrics_pb2.RunRollupRequest(start_date=BEFORE.isoformat(), end_date=BEFORE.isoformat())
    )
    assert await metric_rows(server.pool) == before


async def test_a_late_event_after_an_erase_is_counted_beside_the_erased_users(
    server: MetricsServer,
) -> None:
    before = {row[:4]: row[4] for row in await metric_rows(server.pool)}
    late = event("tracked.login", at(D0, 15), user_id=B, stage="Activation")
    await server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[late]))
    await server.stub.RunRollup(WINDOW)
    after = {row[:4]: row[4] for row in await metric_rows(server.pool)}
    changed = {
        key: (before.get(key), value) for key, value in after.items() if before.get(key) != value
    }
    by_type = '{"event_type": "tracked.login"}'
    # X was active on D0 in Acquisition and Activation, A in Acquisition: B
    # makes two users active in Activation and three in all.
    assert changed == {
        (D0, "Activation", "active_users", "{}"): (1, 2),
        (D0, "all", "active_users", "{}"): (2, 3),
        (D0, "Activation", "events", "{}"): (3, 4),
        (D0, "all", "events", "{}"): (7, 8),
        (D0, "Activation", "events", by_type): (None, 1),
        (D0, "all", "events", by_type): (2, 3),
    }
