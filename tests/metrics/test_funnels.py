"""GetEventFunnel against a real metrics server and PostgreSQL: the three order
modes, the window's edge, breakdowns, validation, partition pruning, and a
property test holding the SQL to a brute-force Python computation of the
definitions (tests/metrics/analytics_model.py) on generated event logs."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.metrics.v1 import metrics_pb2
from runtime.clock import ManualClock
from services.metrics.analytics import parse_funnel
from services.metrics.store.analytics import funnel_query
from tests.metrics.analytics_model import STAGES, Event, Match, funnel_model, load
from tests.metrics.conftest import MetricsServer, create_partitions, serve_metrics
from tests.support import ScratchDatabase, error_info, rpc_error, violated_fields

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
# The first day of the month before last: every generated event has a partition.
BASE = (NOW.replace(day=1) - timedelta(days=40)).replace(day=1, hour=0)
ORDERS = {
    "ordered": metrics_pb2.FUNNEL_ORDER_ORDERED,
    "strict": metrics_pb2.FUNNEL_ORDER_STRICT,
    "any": metrics_pb2.FUNNEL_ORDER_ANY,
}


@pytest.fixture(scope="module")
async def server(own_database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    await create_partitions(own_database, NOW.date(), months_behind=6)
    async with serve_metrics(own_database, ManualClock(NOW)) as server:
        yield server


def request(
    steps: list[Match],
    window: timedelta,
    first: date,
    last: date,
    order: str = "ordered",
    breakdown: str | None = None,
) -> metrics_pb2.GetEventFunnelRequest:
    message = metrics_pb2.GetEventFunnelRequest(
        steps=[step.message() for step in steps],
        start_date=first.isoformat(),
        end_date=last.isoformat(),
        order=ORDERS[order],
    )
    message.conversion_window.FromTimedelta(window)
    if breakdown == "stage":
        message.breakdown.stage = True
    elif breakdown is not None:
        message.breakdown.data_key = breakdown
    return message


def answer(steps: Any) -> list[tuple[int, int | None]]:
    return [
        (
            s.people,
            s.median_time_from_previous.ToTimedelta() // timedelta(microseconds=1)
            if s.HasField("median_time_from_previous")
            else None,
        )
        for s in steps
    ]


SIGNUP, BUY = Match("tracked.signup"), Match("tracked.purchase")


async def test_a_step_exactly_at_the_window_end_counts_and_a_microsecond_later_does_not(
    server: MetricsServer,
) -> None:
    on_time, late, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    t = BASE + timedelta(days=3)
    await load(
        server,
        [
            Event(on_time, "tracked.signup", t),
            Event(on_time, "tracked.purchase", t + timedelta(hours=1)),
            Event(late, "tracked.signup", t),
            Event(late, "tracked.purchase", t + timedelta(hours=1, microseconds=1)),
            Event(never, "tracked.signup", t),
        ],
    )
    reply = await server.stub.GetEventFunnel(
        request([SIGNUP, BUY], timedelta(hours=1), t.date(), t.date())
    )
    assert answer(reply.steps) == [(3, None), (1, 3_600_000_000)]
    assert [s.conversion_from_previous for s in reply.steps] == [1.0, pytest.approx(1 / 3)]
    assert [s.conversion_from_first for s in reply.steps] == [1.0, pytest.approx(1 / 3)]


async def test_the_order_modes_differ_as_posthog_defines_them(server: MetricsServer) -> None:
    in_order, reversed_, interrupted = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    t = BASE + timedelta(days=3)
    minute = timedelta(minutes=1)
    await load(
        server,
        [
            Event(in_order, "tracked.signup", t),
            Event(in_order, "tracked.purchase", t + minute),
            Event(reversed_, "tracked.purchase", t),
            Event(reversed_, "tracked.signup", t + minute),
            Event(interrupted, "tracked.signup", t),
            Event(interrupted, "tracked.login", t + minute),
            Event(interrupted, "tracked.purchase", t + 2 * minute),
        ],
    )
    people = {}
    for order in ORDERS:
        reply = await server.stub.GetEventFunnel(
            request([SIGNUP, BUY], timedelta(hours=1), t.date(), t.date(), order)
        )
        people[order] = [s.people for s in reply.steps]
    assert people == {"ordered": [3, 2], "strict": [3, 1], "any": [3, 3]}


async def test_a_breakdown_groups_people_by_their_first_step(server: MetricsServer) -> None:
    t = BASE + timedelta(days=3)
    users = [uuid.uuid4() for _ in range(3)]
    await load(
        server,
        [
            Event(users[0], "tracked.signup", t, "Acquisition", {"source": "ads"}),
            Event(users[0], "tracked.purchase", t + timedelta(hours=2), "Revenue"),
            Event(users[1], "tracked.signup", t, "Acquisition", {"source": "ads"}),
            Event(users[2], "tracked.signup", t, "Activation"),
        ],
    )
    reply = await server.stub.GetEventFunnel(
        request([SIGNUP, BUY], timedelta(days=1), t.date(), t.date(), breakdown="source")
    )
    assert [(g.breakdown_value, [s.people for s in g.steps]) for g in reply.breakdown] == [
        ("ads", [2, 1]),
        ("", [1, 0]),
    ]
    by_stage = await server.stub.GetEventFunnel(
        request([SIGNUP, BUY], timedelta(days=1), t.date(), t.date(), breakdown="stage")
    )
    assert [g.breakdown_value for g in by_stage.breakdown] == ["Acquisition", "Activation"]


async def test_an_empty_range_has_steps_with_nobody(server: MetricsServer) -> None:
    await load(server, [])
    reply = await server.stub.GetEventFunnel(
        request([SIGNUP, BUY], timedelta(days=1), BASE.date(), BASE.date())
    )
    assert answer(reply.steps) == [(0, None), (0, None)]
    assert [s.conversion_from_previous for s in reply.steps] == [0.0, 0.0]
    assert not reply.breakdown


async def test_bad_requests_name_each_field(server: MetricsServer) -> None:
    bad = metrics_pb2.GetEventFunnelRequest(
        steps=[
            metrics_pb2.EventMatch(event_type="tracked.signup"),
            metrics_pb2.EventMatch(event_type="purchase"),
            metrics_pb2.EventMatch(event_type="Tracked.*"),
        ],
        start_date="2026-13-01",
        end_date="2026-01-01",
        order=9,  # type: ignore[arg-type]
    )
    bad.steps[0].condition.update({"v": 1, "attr": "plan", "op": "eq", "value": "pro"})
    bad.breakdown.data_key = "1bad"
    error = await rpc_error(server.stub.GetEventFunnel(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [
        "steps[0].condition",
        "steps[1].event_type",
        "steps[2].event_type",
        "conversion_window",
        "start_date",
        "order",
        "breakdown.data_key",
    ]
    one = request([SIGNUP], timedelta(days=91), BASE.date(), BASE.date())
    one.steps[0].condition.update(
        {"v": 1, "attr": "x", "src": "event", "op": "regex", "value": "a"}
    )
    error = await rpc_error(server.stub.GetEventFunnel(one))
    assert violated_fields(error) == ["steps", "steps[0].condition", "conversion_window"]


async def test_only_the_partitions_of_the_range_and_window_are_read(
    server: MetricsServer,
) -> None:
    first = BASE.date() + timedelta(days=3)
    for order in ORDERS:
        query = parse_funnel(request([SIGNUP, BUY], timedelta(days=2), first, first, order))
        sql, args = funnel_query(query)
        # The pool decodes JSON.
        plan = json.dumps(await server.pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        partitions = await server.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'lifecycle_events'::regclass"
        )
        scanned = {r["relname"] for r in partitions if f'"{r["relname"]}"' in plan}
        assert scanned == {f"lifecycle_events_{first.year:04d}_{first.month:02d}"}, order
        assert len(partitions) > 3


CONDITIONS = [
    None,
    {"v": 1, "attr": "plan", "src": "event", "op": "eq", "value": "pro"},
    {"v": 1, "attr": "plan", "src": "event", "op": "contains", "value": "PR", "ci": True},
    {"v": 1, "attr": "amount", "src": "event", "op": "gte", "value": 30},
    {"v": 1, "attr": "plan", "src": "event", "op": "not_in", "value": ["free", "Pro"]},
    {
        "v": 1,
        "any": [
            {"attr": "amount", "src": "event", "op": "not_exists"},
            {"not": {"attr": "amount", "src": "event", "op": "between", "value": [1, 10]}},
        ],
    },
]
TYPES = ["tracked.view", "tracked.cart", "tracked.buy", "tracked.other"]
EVENTS = st.builds(
    lambda user, kind, minutes, stage, plan, amount: (user, kind, minutes, stage, plan, amount),
    st.integers(0, 4),
    st.sampled_from(TYPES),
    # Ten-minute steps over four days: ties, and steps at the window's very end.
    st.integers(0, 4 * 144).map(lambda n: n * 10),
    st.sampled_from([None, *STAGES]),
    st.sampled_from([None, "free", "pro", "Pro"]),
    st.sampled_from([None, 5, 30, "30"]),
)
STEPS = st.lists(
    st.builds(Match, st.sampled_from([*TYPES, "tracked.*"]), st.sampled_from(CONDITIONS)),
    min_size=2,
    max_size=4,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(EVENTS, max_size=40),
    STEPS,
    st.sampled_from([timedelta(minutes=30), timedelta(hours=6), timedelta(days=1)]),
    st.integers(0, 2),
    st.integers(0, 1),
    st.sampled_from(list(ORDERS)),
    st.sampled_from([None, "stage", "plan"]),
)
async def test_the_funnel_is_its_definition(
    server: MetricsServer,
    rows: list[tuple[int, str, int, str | None, str | None, Any]],
    steps: list[Match],
    window: timedelta,
    offset: int,
    days: int,
    order: str,
    breakdown: str | None,
) -> None:
    users = [uuid.UUID(int=n + 1) for n in range(5)]
    events = [
        Event(
            users[user],
            kind,
            BASE + timedelta(minutes=minutes),
            stage,
            {k: v for k, v in (("plan", plan), ("amount", amount)) if v is not None},
        )
        for user, kind, minutes, stage, plan, amount in rows
    ]
    await load(server, events)
    first = BASE.date() + timedelta(days=offset)
    last = first + timedelta(days=days)
    reply = await server.stub.GetEventFunnel(request(steps, window, first, last, order, breakdown))
    expected = funnel_model(events, steps, window, first, last, order, breakdown)
    assert answer(reply.steps) == expected.pop(None)
    assert {g.breakdown_value: answer(g.steps) for g in reply.breakdown} == expected


async def test_a_range_reaching_archived_days_is_refused(server: MetricsServer) -> None:
    """As GetStageFunnel: the archived days' events are gone, not zero."""
    since = BASE + timedelta(days=2)
    await server.pool.execute(
        "INSERT INTO archived_partitions (partition_name, range_start, range_end,"
        " data_location, manifest) VALUES ('test_archived', $1, $2, 'nowhere', '{}')",
        since - timedelta(days=30),
        since,
    )
    try:
        early = request(
            [SIGNUP, BUY], timedelta(days=1), since.date() - timedelta(days=1), since.date()
        )
        error = await rpc_error(server.stub.GetEventFunnel(early))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(error).reason == "EVENTS_ARCHIVED"
        on_time = request([SIGNUP, BUY], timedelta(days=1), since.date(), since.date())
        assert len((await server.stub.GetEventFunnel(on_time)).steps) == 2
    finally:
        await server.pool.execute(
            "DELETE FROM archived_partitions WHERE partition_name = 'test_archived'"
        )
