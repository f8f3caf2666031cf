"""The daily rollup and the reports read from it, on a hand-checked data set in
a database of its own: stage moves back and forth, an erased user, a late
event, executions, triggers and segments; idempotency, the scheduler's
clock and advisory lock, and the RPCs' bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from runtime.clock import ManualClock
from runtime.stages import stage_value
from services.metrics.domain import trailing_window
from services.metrics.handlers import MAX_POINTS, Rollups
from services.metrics.store import ROLLUP_LOCK
from suite.cli import main
from tests.metrics.conftest import (
    MetricsServer,
    as_metrics,
    at,
    create_partitions,
    event,
    metric_rows,
    serve_metrics,
)
from tests.support import ScratchDatabase, eventually, rpc_error, violated_fields

D = date(2025, 3, 10)
D1 = D + timedelta(days=1)
U1, U2, U3, U4, U5 = (uuid.uuid4() for _ in range(5))
W1, W2, T1, S1 = "wf-1", "wf-2", "tr-1", "seg-1"


def moved(user: uuid.UUID, day: date, hour: int, source: str, target: str) -> Any:
    return event(
        "user.stage_changed",
        at(day, hour),
        user_id=user,
        stage=target,
        data={"from_stage": source, "to_stage": target},
    )


DATA_SET = [
    event("user.created", at(D - timedelta(days=1), 23), user_id=U4, stage="Acquisition"),
    event("user.created", at(D, 9), user_id=U1, stage="Acquisition"),
    event("user.created", at(D, 10), user_id=U2, stage="Acquisition"),
    event("user.created", at(D, 11), user_id=U3, stage="Activation"),
    moved(U1, D, 13, "Acquisition", "Activation"),
    event("tracked.login", at(D, 12), user_id=U3, stage="Activation"),
    event("tracked.login", at(D, 15), user_id=U3, stage="Activation"),
    event("execution.started", at(D, 14), user_id=U1, stage="Activation", data={"workflow_id": W1}),
    event(
        "execution.completed", at(D, 16), user_id=U1, stage="Activation", data={"workflow_id": W1}
    ),
    event("trigger.fired", at(D, 14), user_id=U1, data={"trigger_id": T1}),
    event("segment.entered", at(D, 17), user_id=U2, data={"segment_id": S1}),
    # U1 goes back to Acquisition and forth again; U2 moves a day later.
    moved(U1, D1, 9, "Activation", "Acquisition"),
    moved(U2, D1, 10, "Acquisition", "Activation"),
    event("user.erased", at(D1, 12), stage="Acquisition"),
    moved(U1, D1, 21, "Acquisition", "Activation"),
    event("tracked.purchase", at(D1, 8), user_id=U3, stage="Activation"),
    event("tracked.login", at(D1, 20), user_id=U1, stage="Acquisition"),
    event("execution.failed", at(D1, 5), user_id=U2, stage="Acquisition", data={"workflow_id": W2}),
    event("segment.exited", at(D1, 6), user_id=U2, data={"segment_id": S1}),
]
LATE = event("user.created", at(D, 8), user_id=U5, stage="Referral")


@pytest.fixture(scope="module")
async def server(own_database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    await create_partitions(own_database, D, months_behind=1)
    clock = ManualClock(at(D1, 23))
    async with serve_metrics(own_database, clock) as server:
        reply = await server.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=DATA_SET))
        assert reply.recorded_count == len(DATA_SET)
        yield server


async def values(
    conn: asyncpg.Connection, day: date, name: str, dimensions: str = "{}"
) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT lifecycle_stage, metric_value FROM metrics_daily"
        " WHERE metric_date = $1 AND metric_name = $2 AND dimensions = $3::text::jsonb",
        day,
        name,
        dimensions,
    )
    return {r["lifecycle_stage"]: float(r["metric_value"]) for r in rows}


ZERO = {"Retention": 0.0, "Revenue": 0.0, "Referral": 0.0}


@pytest.fixture(scope="module")
async def rolled(server: MetricsServer, own_database: ScratchDatabase) -> MetricsServer:
    """The trailing rollup at 23:00 on D+1 rolls up the 3 days before and today."""
    rollups = Rollups(server.pool, server.clock, late_days=3)
    result = await rollups.trailing()
    assert result is not None and (result.first, result.through) == (D - timedelta(days=2), D1)
    return server


async def test_the_rollup_matches_the_hand_checked_counts(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    async with as_metrics(own_database) as conn:
        assert await values(conn, D - timedelta(days=1), "population_eod") == {
            "Acquisition": 1,
            "Activation": 0,
            **ZERO,
        }
        assert await values(conn, D, "entries") == {"Acquisition": 2, "Activation": 2}
        assert await values(conn, D, "exits") == {"Acquisition": 1, "Activation": 0}
        assert await values(conn, D, "net_flow") == {"Acquisition": 1, "Activation": 2}
        assert await values(conn, D, "population_eod") == {
            "Acquisition": 2,
            "Activation": 2,
            **ZERO,
        }
        to_activation = '{"to_stage": "Activation"}'
        assert await values(conn, D, "conversions", to_activation) == {"Acquisition": 1}
        assert await values(conn, D, "conversion_rate", to_activation) == {"Acquisition": 1.0}
        assert await values(conn, D, "time_in_stage_p50") == {"Acquisition": 14400}
        assert await values(conn, D, "users_created") == {
            "all": 3,
            "Acquisition": 2,
            "Activation": 1,
        }
        assert await values(conn, D, "active_users") == {"all": 1, "Activation": 1}
        assert await values(conn, D, "executions_started") == {"all": 1, "Activation": 1}
        assert await values(conn, D, "executions_started", '{"workflow_id": "wf-1"}') == {"all": 1}
        assert await values(conn, D, "executions_completed") == {"all": 1, "Activation": 1}
        assert await values(conn, D, "triggers_fired", '{"trigger_id": "tr-1"}') == {"all": 1}
        assert await values(conn, D, "segment_entries", '{"segment_id": "seg-1"}') == {"all": 1}
        assert (await values(conn, D, "events"))["all"] == 10
        assert await values(conn, D, "events", '{"event_type": "tracked.login"}') == {
            "all": 2,
            "Activation": 2,
        }

        assert await values(conn, D1, "entries") == {"Acquisition": 1, "Activation": 2}
        assert await values(conn, D1, "exits") == {"Acquisition": 3, "Activation": 1}
        assert await values(conn, D1, "population_eod") == {
            "Acquisition": 0,
            "Activation": 3,
            **ZERO,
        }
        assert await values(conn, D1, "conversions", to_activation) == {"Acquisition": 2}
        assert await values(conn, D1, "conversion_rate", to_activation) == {"Acquisition": 1.0}
        assert await values(conn, D1, "conversion_rate", '{"to_stage": "Acquisition"}') == {
            "Activation": 0.5
        }
        assert await values(conn, D1, "time_in_stage_p50") == {
            "Acquisition": 64800,
            "Activation": 72000,
        }
        assert await values(conn, D1, "time_in_stage_p90") == {
            "Acquisition": 82080,
            "Activation": 72000,
        }
        assert await values(conn, D1, "users_erased") == {"all": 1, "Acquisition": 1}
        assert await values(conn, D1, "active_users") == {
            "all": 2,
            "Activation": 1,
            "Acquisition": 1,
        }
        assert await values(conn, D1, "executions_failed", '{"workflow_id": "wf-2"}') == {"all": 1}
        assert await values(conn, D1, "segment_exits") == {"all": 1}


async def test_a_second_rollup_of_the_same_days_changes_nothing(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    async with as_metrics(own_database) as conn:
        before = await metric_rows(conn)
    reply = await rolled.stub.RunRollup(
        metrics_pb2.RunRollupRequest(start_date=D.isoformat(), end_date=D1.isoformat())
    )
    assert (reply.rows_written, reply.days) == (0, 2)
    async with as_metrics(own_database) as conn:
        assert await metric_rows(conn) == before


async def test_the_funnel_counts_entrants_and_the_share_that_moved_on(
    rolled: MetricsServer,
) -> None:
    await rolled.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[LATE]))
    reply = await rolled.stub.GetStageFunnel(
        metrics_pb2.GetStageFunnelRequest(start_date=D.isoformat(), end_date=D1.isoformat())
    )
    assert [(s.lifecycle_stage, s.entered, s.conversion_rate) for s in reply.stages] == [
        (stage_value("Acquisition"), 2, 0.0),
        (stage_value("Activation"), 3, 1.0),
        (stage_value("Retention"), 0, 0.0),
        (stage_value("Revenue"), 0, 0.0),
        (stage_value("Referral"), 1, 0.0),
    ]


async def test_erasing_a_user_keeps_the_daily_counts(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    window = metrics_pb2.RunRollupRequest(start_date=D.isoformat(), end_date=D1.isoformat())
    await rolled.stub.RunRollup(window)
    async with as_metrics(own_database) as conn:
        before = await metric_rows(conn)
    erased = await rolled.stub.EraseUserData(metrics_pb2.EraseUserDataRequest(user_id=str(U2)))
    assert erased.erased_count == 5
    listed = await rolled.stub.ListEvents(metrics_pb2.ListEventsRequest(user_id=str(U2)))
    assert list(listed.events) == []
    assert (await rolled.stub.RunRollup(window)).rows_written == 0
    async with as_metrics(own_database) as conn:
        assert await metric_rows(conn) == before


async def test_get_metrics_returns_series_by_name_stage_and_dimensions(
    rolled: MetricsServer,
) -> None:
    reply = await rolled.stub.GetMetrics(
        metrics_pb2.GetMetricsRequest(
            metric_names=["entries"],
            lifecycle_stages=[stage_value("Acquisition")],
            start_date=D.isoformat(),
            end_date=D1.isoformat(),
        )
    )
    [series] = reply.series
    assert (series.metric_name, series.lifecycle_stage) == ("entries", stage_value("Acquisition"))
    assert [(p.metric_date, p.value) for p in series.points] == [
        (D.isoformat(), 2.0),
        (D1.isoformat(), 1.0),
    ]
    request = metrics_pb2.GetMetricsRequest(
        metric_names=["executions_started", "executions_failed"],
        lifecycle_stages=[stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED],
        start_date=D.isoformat(),
        end_date=D1.isoformat(),
    )
    request.dimensions.update({"workflow_id": W2})
    [series] = (await rolled.stub.GetMetrics(request)).series
    assert (series.metric_name, dict(series.dimensions)) == (
        "executions_failed",
        {"workflow_id": W2},
    )
    assert series.lifecycle_stage == 0
    assert [p.value for p in series.points] == [1.0]


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"start_date": "2025-03-10"}, ["end_date"]),
        ({"start_date": "10/03/2025", "end_date": "2025-03-11"}, ["start_date"]),
        ({"start_date": "2025-03-11", "end_date": "2025-03-10"}, ["end_date"]),
        ({"start_date": "2020-01-01", "end_date": "2025-01-01"}, ["end_date"]),
        (
            {"start_date": "2025-03-10", "end_date": "2025-03-11", "metric_names": ["mau"]},
            ["metric_names[0]"],
        ),
        (
            {"start_date": "2025-03-10", "end_date": "2025-03-11", "lifecycle_stages": [7]},
            ["lifecycle_stages[0]"],
        ),
    ],
)
async def test_get_metrics_refuses_bad_input(
    rolled: MetricsServer, fields: dict[str, Any], violated: list[str]
) -> None:
    error = await rpc_error(rolled.stub.GetMetrics(metrics_pb2.GetMetricsRequest(**fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == violated


async def test_get_metrics_refuses_a_query_matching_too_many_points(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    far = date(2025, 6, 1)
    async with as_metrics(own_database) as conn:
        await conn.execute(
            "INSERT INTO metrics_daily (metric_date, lifecycle_stage, metric_name, metric_value,"
            " dimensions) SELECT $1, 'all', 'events', 1, jsonb_build_object('event_type', n)"
            " FROM generate_series(0, $2) n",
            far,
            MAX_POINTS,
        )
        try:
            error = await rpc_error(
                rolled.stub.GetMetrics(
                    metrics_pb2.GetMetricsRequest(
                        start_date=far.isoformat(), end_date=far.isoformat()
                    )
                )
            )
        finally:
            await conn.execute("DELETE FROM metrics_daily WHERE metric_date = $1", far)
    assert violated_fields(error) == ["end_date"]


async def test_run_rollup_and_the_funnel_refuse_bad_ranges(rolled: MetricsServer) -> None:
    for call in (
        rolled.stub.RunRollup(metrics_pb2.RunRollupRequest(start_date="2025-03-10")),
        rolled.stub.RunRollup(
            metrics_pb2.RunRollupRequest(start_date="2025-03-10", end_date="2025-02-30")
        ),
        rolled.stub.GetStageFunnel(metrics_pb2.GetStageFunnelRequest(end_date="2025-03-10")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) in (["end_date"], ["start_date"])


async def test_a_late_event_is_counted_by_the_trailing_window_and_carried_forward(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    await rolled.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[LATE]))
    rolled.clock.set(at(D1 + timedelta(days=1), 1))
    rollups = Rollups(rolled.pool, rolled.clock, late_days=3)
    result = await rollups.trailing()
    assert result is not None
    assert (result.first, result.through) == (D - timedelta(days=1), D1 + timedelta(days=1))
    async with as_metrics(own_database) as conn:
        assert (await values(conn, D, "entries"))["Referral"] == 1
        for day in (D, D1, D1 + timedelta(days=1)):
            assert (await values(conn, day, "population_eod"))["Referral"] == 1
        assert (await values(conn, D1, "population_eod"))["Activation"] == 3


async def test_the_snapshot_adds_todays_moves_to_the_last_rolled_day(
    rolled: MetricsServer,
) -> None:
    rolled.clock.set(at(D1 + timedelta(days=1), 18))
    await rolled.stub.RecordEvents(metrics_pb2.RecordEventsRequest(events=[LATE]))
    await rolled.stub.RunRollup(metrics_pb2.RunRollupRequest())
    await rolled.stub.RecordEvents(
        metrics_pb2.RecordEventsRequest(
            events=[moved(U3, D1 + timedelta(days=1), 17, "Activation", "Retention")]
        )
    )
    reply = await rolled.stub.GetStageSnapshot(metrics_pb2.GetStageSnapshotRequest())
    assert {s.lifecycle_stage: s.users for s in reply.stages} == {
        stage_value("Acquisition"): 0,
        stage_value("Activation"): 2,
        stage_value("Retention"): 1,
        stage_value("Revenue"): 0,
        stage_value("Referral"): 1,
    }
    assert reply.rolled_up_through == D1.isoformat()
    assert reply.snapshot_time.ToDatetime().hour == 18


def test_the_trailing_window_never_reaches_days_whose_events_were_archived() -> None:
    today = date(2026, 11, 26)
    paused_since = today - timedelta(days=900)
    assert trailing_window(today, 3, paused_since, None) == (
        paused_since + timedelta(days=1),
        today,
    )
    logged_since = date(2024, 11, 1)
    assert trailing_window(today, 3, paused_since, None, logged_since) == (logged_since, today)
    assert trailing_window(today, 3, None, None, today + timedelta(days=1)) is None


# Whether some session waits for a lock this connection holds.
BLOCKED_BY_ME = (
    "SELECT EXISTS (SELECT FROM pg_stat_activity"
    " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)))"
)


async def test_one_rollup_runs_at_a_time(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    rollups = Rollups(rolled.pool, rolled.clock, late_days=1)
    holder = await asyncpg.connect(own_database.admin_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", ROLLUP_LOCK)
        assert await rollups.trailing() is None
        waiting = asyncio.create_task(rollups.trailing(wait=True))

        async def blocked_by_the_holder() -> bool:
            assert not waiting.done(), "the rollup ran while another held the lock"
            return bool(await holder.fetchval(BLOCKED_BY_ME))

        # Seen waiting in PostgreSQL for the holder's lock, not merely not done yet.
        await eventually(blocked_by_the_holder)
        assert not waiting.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK)
        assert await asyncio.wait_for(waiting, 10) is not None
    finally:
        await holder.close()


async def test_the_rollup_command_recomputes_a_range(
    rolled: MetricsServer,
    own_database: ScratchDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", own_database.admin_url)
    code = await asyncio.to_thread(
        main, ["rollup", "--from", D.isoformat(), "--to", D1.isoformat()]
    )
    assert code == 0
    assert "rows written" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["rollup", "--from", D1.isoformat()]) == 1


async def test_the_service_rolls_up_on_its_own_schedule(
    rolled: MetricsServer, own_database: ScratchDatabase
) -> None:
    today = D1 + timedelta(days=1)
    async with as_metrics(own_database) as conn:
        await conn.execute("DELETE FROM metrics_daily WHERE metric_date = $1", today)
        clock = ManualClock(at(today, 19))
        async with serve_metrics(own_database, clock, rollup_interval=0.1):

            async def rolled_up_today() -> bool:
                return bool(await values(conn, today, "population_eod"))

            await eventually(rolled_up_today)
        assert (await values(conn, today, "population_eod"))["Referral"] == 1
