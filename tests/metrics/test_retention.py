"""GetRetention against a real metrics server and PostgreSQL: cohorts by day,
week and month, period 0, periods not begun yet, validation, partition
pruning, and a property test holding the SQL to a brute-force Python
computation of the definition (tests/metrics/analytics_model.py)."""

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
from services.metrics.analytics import Period, parse_retention
from services.metrics.store.analytics import retention_query
from tests.metrics.analytics_model import Event, Match, load, retention_model
from tests.metrics.conftest import MetricsServer, create_partitions, serve_metrics
from tests.support import ScratchDatabase, rpc_error, violated_fields

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
# A Monday some nine weeks back: every generated event has a partition.
BASE = (NOW - timedelta(weeks=9, days=NOW.weekday())).replace(hour=0)
CREATED, LOGIN = Match("user.created"), Match("tracked.login")


@pytest.fixture(scope="module")
async def server(own_database: ScratchDatabase) -> AsyncIterator[MetricsServer]:
    await create_partitions(own_database, NOW.date(), months_behind=6)
    async with serve_metrics(own_database, ManualClock(NOW)) as server:
        yield server


def request(
    cohort: Match, returning: Match, period: Period, periods: int, first: date, last: date
) -> metrics_pb2.GetRetentionRequest:
    return metrics_pb2.GetRetentionRequest(
        cohort_event=cohort.message(),
        return_event=returning.message(),
        period=period.value,
        periods=periods,
        start_date=first.isoformat(),
        end_date=last.isoformat(),
    )


def cohorts(reply: metrics_pb2.GetRetentionResponse) -> list[tuple[date, int, list[Any]]]:
    return [
        (
            date.fromisoformat(c.period_start),
            c.size,
            [(v.period, date.fromisoformat(v.period_start), v.returned) for v in c.values],
        )
        for c in reply.cohorts
    ]


def created(user: uuid.UUID, at: datetime) -> Event:
    return Event(user, "user.created", at, "Acquisition", {"source": "api"})


async def test_weekly_cohorts_and_the_share_back_each_week(server: MetricsServer) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hour = timedelta(hours=1)
    await load(
        server,
        [
            created(a, BASE + hour),
            Event(a, "tracked.login", BASE + 2 * hour),  # week 0, after joining
            Event(a, "tracked.login", BASE + timedelta(weeks=2)),  # week 2
            created(b, BASE + timedelta(days=6)),
            Event(b, "tracked.login", BASE + timedelta(days=6) - hour),  # before joining
            Event(b, "tracked.login", BASE + timedelta(days=8)),  # week 1
            created(c, BASE + timedelta(weeks=1)),
        ],
    )
    reply = await server.stub.GetRetention(
        request(CREATED, LOGIN, Period.WEEK, 2, BASE.date(), BASE.date() + timedelta(weeks=1))
    )
    monday = BASE.date()
    week = timedelta(weeks=1)
    assert cohorts(reply) == [
        (monday, 2, [(0, monday, 1), (1, monday + week, 1), (2, monday + 2 * week, 1)]),
        (
            monday + week,
            1,
            [(0, monday + week, 0), (1, monday + 2 * week, 0), (2, monday + 3 * week, 0)],
        ),
    ]
    assert [v.share for v in reply.cohorts[0].values] == [0.5, 0.5, 0.5]


async def test_periods_not_begun_yet_are_left_out(server: MetricsServer) -> None:
    user = uuid.uuid4()
    await load(server, [created(user, NOW - timedelta(days=1))])
    day = NOW.date() - timedelta(days=1)
    reply = await server.stub.GetRetention(request(CREATED, LOGIN, Period.DAY, 30, day, day))
    assert cohorts(reply) == [(day, 1, [(0, day, 0), (1, NOW.date(), 0)])]


async def test_no_cohort_event_in_the_range_is_no_cohort(server: MetricsServer) -> None:
    await load(server, [Event(uuid.uuid4(), "tracked.login", BASE)])
    reply = await server.stub.GetRetention(
        request(CREATED, LOGIN, Period.MONTH, 3, BASE.date(), BASE.date())
    )
    assert not reply.cohorts


async def test_bad_requests_name_each_field(server: MetricsServer) -> None:
    bad = metrics_pb2.GetRetentionRequest(
        return_event=metrics_pb2.EventMatch(event_type="login"),
        periods=0,
        start_date="2026-01-02",
        end_date="2026-01-01",
    )
    error = await rpc_error(server.stub.GetRetention(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [
        "cohort_event",
        "return_event.event_type",
        "period",
        "periods",
        "end_date",
    ]
    condition = request(CREATED, LOGIN, Period.DAY, 101, BASE.date(), BASE.date())
    condition.cohort_event.condition.update({"v": 1, "stage": {"op": "eq", "value": "Revenue"}})
    error = await rpc_error(server.stub.GetRetention(condition))
    assert violated_fields(error) == ["cohort_event.condition", "periods"]
    late = request(CREATED, LOGIN, Period.MONTH, 100, date(9989, 12, 31), date(9990, 1, 1))
    assert violated_fields(await rpc_error(server.stub.GetRetention(late))) == ["end_date"]


async def test_only_the_partitions_of_the_cohorts_and_their_periods_are_read(
    server: MetricsServer,
) -> None:
    first = BASE.date()
    query = parse_retention(request(CREATED, LOGIN, Period.DAY, 3, first, first))
    sql, args = retention_query(query)
    plan = json.dumps(await server.pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
    partitions = await server.pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'lifecycle_events'::regclass"
    )
    scanned = {r["relname"] for r in partitions if f'"{r["relname"]}"' in plan}
    months = {first, first + timedelta(days=3)}
    assert scanned == {f"lifecycle_events_{m.year:04d}_{m.month:02d}" for m in months}
    assert len(partitions) > len(scanned) + 2


EVENTS = st.tuples(
    st.integers(0, 5),
    st.sampled_from(["user.created", "tracked.login", "tracked.buy"]),
    # Six-hour steps over nine weeks.
    st.integers(0, 9 * 7 * 4).map(lambda n: n * 6),
    st.sampled_from([None, "pro", "free"]),
)
MATCHES = st.sampled_from(
    [
        CREATED,
        LOGIN,
        Match("tracked.*"),
        Match(
            "tracked.login", {"v": 1, "attr": "plan", "src": "event", "op": "neq", "value": "free"}
        ),
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(EVENTS, max_size=40),
    MATCHES,
    MATCHES,
    st.sampled_from(list(Period)),
    st.integers(1, 4),
    st.integers(0, 30),
    st.integers(0, 30),
)
async def test_retention_is_its_definition(
    server: MetricsServer,
    rows: list[tuple[int, str, int, str | None]],
    cohort: Match,
    returning: Match,
    period: Period,
    periods: int,
    offset: int,
    days: int,
) -> None:
    users = [uuid.UUID(int=n + 1) for n in range(6)]
    events = [
        Event(
            users[user],
            kind,
            BASE + timedelta(hours=hours),
            "Acquisition",
            {"plan": plan} if plan else {},
        )
        for user, kind, hours, plan in rows
    ]
    await load(server, events)
    first = BASE.date() + timedelta(days=offset)
    last = first + timedelta(days=days)
    reply = await server.stub.GetRetention(request(cohort, returning, period, periods, first, last))
    assert cohorts(reply) == retention_model(
        events, cohort, returning, period, periods, first, last, NOW.date()
    )
