"""The analytics pages against a real suite with events tracked at chosen
times: the event funnel and the retention table show what GetEventFunnel and
GetRetention answer, and a small case counted by hand; bad forms and what
the service refuses read as messages (400); payloads in event data and in
the form stay text."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from markupsafe import escape
from starlette.datastructures import QueryParams

from console.analytics import funnel_request, retention_request, span
from console.app import create_app
from console.calls import Services
from console.config import load_console_config
from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.migrations import acting_as
from runtime.partitions import ensure_partitions
from runtime.structs import dict_to_struct
from services.metrics.domain import EVENTS_TABLE
from suite.registry import schema_owners
from tests.console.conftest import SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.support import eventually, free_port

NAMES = ("visit", "signup", "buy", "join", "back")


@dataclass(frozen=True)
class Recorded:
    """The event types of the module's product (`tracked.<family>.<name>`),
    and the days its retention cohorts start."""

    family: str
    today: date

    def type(self, name: str) -> str:
        return f"tracked.{self.family}.{name}"

    @property
    def days(self) -> tuple[date, date, date]:
        return self.today - timedelta(days=2), self.today - timedelta(days=1), self.today


async def _partition_last_month(console: Console, today: date) -> None:
    """The event log keeps months from the current one: events of two days ago
    may be in the month before."""
    admin_url = console.env["LIFECYCLE_DATABASE_URL"]
    [owner] = [o for o in schema_owners(admin_url, env={}) if o.schema == "metrics"]
    conn = await asyncpg.connect(admin_url)
    try:
        async with acting_as(conn, owner):
            await ensure_partitions(conn, EVENTS_TABLE, today, behind=1)
    finally:
        await conn.close()


def _at(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.fixture(scope="module")
async def recorded(console_suite: Console) -> Recorded:
    """Four people through a funnel visit → signup → buy (A all three, B two,
    C the first, D the second only), and three cohorts of joiners coming back."""
    now = datetime.now(UTC)
    product = Recorded(f"fa{uuid.uuid4().hex[:8]}", now.date())
    await _partition_last_month(console_suite, product.today)
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    people = {}
    for name in "ABCD":
        created = await users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email=f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com")
            )
        )
        people[name] = created.user.id
    start = now - timedelta(hours=2)
    day0, day1, today = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in product.days)
    events: list[tuple[str, str, datetime, dict[str, Any]]] = [
        ("A", "visit", start, {"plan": f"pro {SCRIPT}"}),
        ("A", "signup", start + timedelta(minutes=10), {}),
        ("A", "buy", start + timedelta(minutes=30), {"amount": 30}),
        ("B", "visit", start, {"plan": "team"}),
        ("B", "signup", start + timedelta(minutes=20), {}),
        ("C", "visit", start, {"plan": "team"}),
        ("D", "signup", start + timedelta(minutes=5), {}),
        # Cohorts by day: A and B joined two days ago, C yesterday.
        ("A", "join", day0 + timedelta(hours=10), {}),
        ("A", "back", day0 + timedelta(hours=11), {}),
        ("A", "back", day1 + timedelta(hours=10), {}),
        ("B", "join", day0 + timedelta(hours=10), {}),
        ("B", "back", today + timedelta(seconds=1), {}),
        ("C", "join", day1 + timedelta(hours=10), {}),
        ("C", "back", today + timedelta(seconds=1), {}),
    ]
    request = triggers_pb2.TrackEventsRequest()
    for person, name, moment, data in events:
        request.events.add(
            user_id=people[person],
            event_type=f"{product.family}.{name}",
            data=dict_to_struct(data),
            event_time=_at(moment),
            message_id=str(uuid.uuid4()),
        )
    await triggers_pb2_grpc.TriggerServiceStub(console_suite.channels["triggers"]).TrackEvents(
        request
    )
    metrics = metrics_pb2_grpc.MetricsServiceStub(console_suite.channels["metrics"])

    async def logged() -> bool:  # the events reach the log through the triggers' outbox
        reply = await metrics.ListEvents(
            metrics_pb2.ListEventsRequest(
                event_types=[product.type(name) for name in NAMES], page_size=100
            )
        )
        return len(reply.events) == len(events)

    await eventually(logged)
    return product


def _funnel(recorded: Recorded, **extra: str | list[str]) -> dict[str, Any]:
    start = (datetime.now(UTC) - timedelta(hours=2)).date()
    return {
        "step": [recorded.type("visit"), recorded.type("signup"), recorded.type("buy"), "", ""],
        "where": ["", "", "", "", ""],
        "window": "1",
        "unit": "days",
        "start": start.isoformat(),
        "end": recorded.today.isoformat(),
        **extra,
    }


def _path(base: str, form: dict[str, Any]) -> str:
    return f"{base}?{urlencode(form, doseq=True)}"


def _cells(html: str, table: str) -> list[list[str]]:
    """The text of each body row's cells of the table with that class."""
    body = html.split(f'<table class="{table}">', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)
        ]
        for r in rows
    ]


def _shown(steps: Sequence[metrics_pb2.EventFunnelStep]) -> list[list[str]]:
    """How the funnel table writes the RPC's steps: people, the two rates, the median."""
    return [
        [
            f"{step.people:,}",
            f"{step.conversion_from_previous:.1%}",
            f"{step.conversion_from_first:.1%}",
            span(step.median_time_from_previous)
            if step.HasField("median_time_from_previous")
            else "—",
        ]
        for step in steps
    ]


async def _rpc_funnel(console: Console, form: dict[str, Any]) -> metrics_pb2.GetEventFunnelResponse:
    metrics = metrics_pb2_grpc.MetricsServiceStub(console.channels["metrics"])
    return await metrics.GetEventFunnel(funnel_request(QueryParams(urlencode(form, doseq=True))))


async def test_the_funnel_shows_the_rpcs_numbers_and_the_hand_count(
    client: httpx.AsyncClient, console_suite: Console, recorded: Recorded
) -> None:
    form = _funnel(recorded)
    html = await page_of(client, _path("/analytics", form))
    reply = await _rpc_funnel(console_suite, form)
    assert [row[2:] for row in _cells(html, "event-funnel")] == _shown(reply.steps)
    # By hand: A, B and C visited; A and B signed up 10 and 20 minutes later; A bought 20 after.
    assert _shown(reply.steps) == [
        ["3", "100.0%", "100.0%", "—"],
        ["2", "66.7%", "66.7%", "15 min"],
        ["1", "50.0%", "33.3%", "20 min"],
    ]
    assert f"<code>{recorded.type('visit')}</code>" in html
    assert 'data-chart="{&#34;labels&#34;: [&#34;1. ' in html
    assert '<script src="/static/analytics.js"></script>' in html
    inert(html)


@pytest.mark.parametrize("order", ["strict", "any"])
async def test_each_order_shows_what_the_rpc_answers(
    client: httpx.AsyncClient, console_suite: Console, recorded: Recorded, order: str
) -> None:
    form = _funnel(recorded, order=order)
    html = await page_of(client, _path("/analytics", form))
    reply = await _rpc_funnel(console_suite, form)
    assert [row[2:] for row in _cells(html, "event-funnel")] == _shown(reply.steps)
    assert f"<option selected>{order}</option>" in html


async def test_a_breakdown_by_attribute_shows_its_values_as_text(
    client: httpx.AsyncClient, console_suite: Console, recorded: Recorded
) -> None:
    form = _funnel(recorded, by="attribute", key="plan")
    html = await page_of(client, _path("/analytics", form))
    reply = await _rpc_funnel(console_suite, form)
    groups = {g.breakdown_value: [s.people for s in g.steps] for g in reply.breakdown}
    assert groups == {"team": [2, 1, 0], f"pro {SCRIPT}": [1, 1, 1]}
    rows = _cells(html, "breakdown")
    assert [row[0] for row in rows] == ["team", f"pro {escape(SCRIPT)}"]
    assert rows[0][1:] == ["2", "1 50.0%", "0 0.0%"]
    assert "pro &lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert "pro &lt;script&gt;" in html.split("data-chart=", 1)[1].split(">", 1)[0]
    inert(html)


async def test_a_step_with_a_condition_counts_what_matches_and_reads_as_a_sentence(
    client: httpx.AsyncClient, console_suite: Console, recorded: Recorded
) -> None:
    where = '{"v": 1, "attr": "plan", "src": "event", "op": "eq", "value": "team"}'
    form = _funnel(recorded, where=[where, "", "", "", ""])
    html = await page_of(client, _path("/analytics", form))
    reply = await _rpc_funnel(console_suite, form)
    assert [s.people for s in reply.steps] == [2, 1, 0]
    assert [row[2] for row in _cells(html, "event-funnel")] == ["2", "1", "0"]
    assert "</code>, where the event&#39;s plan is team</td>" in html
    assert escape(where) in html  # the form keeps it


async def test_the_retention_table_shows_the_rpcs_shares_and_the_hand_count(
    client: httpx.AsyncClient, console_suite: Console, recorded: Recorded
) -> None:
    day0, day1, _ = recorded.days
    form = {
        "cohort": recorded.type("join"),
        "return": recorded.type("back"),
        "period": "day",
        "periods": "2",
        "start": day0.isoformat(),
        "end": day1.isoformat(),
    }
    html = await page_of(client, _path("/analytics/retention", form))
    metrics = metrics_pb2_grpc.MetricsServiceStub(console_suite.channels["metrics"])
    reply = await metrics.GetRetention(retention_request(QueryParams(form)))
    expected = [
        [c.period_start, f"{c.size:,}"]
        + [f"{v.share:.1%} {v.returned:,}" for v in c.values]
        + [""] * (3 - len(c.values))
        for c in reply.cohorts
    ]
    assert _cells(html, "retention") == expected
    # By hand: A came back the same day and the next, B two days after; C (a day later) the next.
    assert expected == [
        [day0.isoformat(), "2", "50.0% 1", "50.0% 1", "50.0% 1"],
        [day1.isoformat(), "1", "0.0% 0", "100.0% 1", ""],
    ]
    assert '<td class="number shade-5">50.0%' in html
    assert '<td class="number shade-10">100.0%' in html
    assert '<td class="number shade-0">0.0%' in html
    assert '<td class="not-yet"></td>' in html  # the day after today has not begun
    inert(html)


async def test_the_pages_show_the_form_alone_until_it_is_sent(client: httpx.AsyncClient) -> None:
    funnel = await page_of(client, "/analytics")
    assert funnel.count('name="step"') == 5 and "event-funnel" not in funnel
    assert 'href="/analytics"' in funnel.split("<main>")[0]  # in the nav
    retention = await page_of(client, "/analytics/retention")
    assert 'value="user.created"' in retention and 'class="retention"' not in retention


_TWO = {"step": ["user.created", "tracked.login"]}


@pytest.mark.parametrize(
    ("path", "form", "field", "message"),
    [
        ("/analytics", {**_TWO, "where": ["{plan: 1}"]}, "steps[0].condition", "is not JSON"),
        ("/analytics", {**_TWO, "where": ["[1]"]}, "steps[0].condition", "a JSON object"),
        ("/analytics", {**_TWO, "where": ["NaN"]}, "steps[0].condition", "is not JSON"),
        ("/analytics", {**_TWO, "where": ['{"a": 1e400}']}, "steps[0].condition", "too large"),
        (
            "/analytics",
            {**_TWO, "where": ['{"a": 1%s}' % ("0" * 400)]},
            "steps[0].condition",
            "int",
        ),
        ("/analytics", {**_TWO, "where": ["[" * 2000]}, "steps[0].condition", "is not JSON"),
        (
            "/analytics",
            {**_TWO, "where": ['{"a": ' * 31 + "1" + "}" * 31]},
            "steps[0].condition",
            "30 levels",
        ),
        (
            "/analytics",
            {**_TWO, "where": ['{"a": ' * 30 + "1" + "}" * 30]},
            "steps[0].condition",
            "must be a node",
        ),
        ("/analytics", {"step": ["user.created"] * 6}, "step", "2 to 5 steps, not 6"),
        ("/analytics", {"step": ["user.created"]}, "step", "2 to 5 steps, not 1"),
        ("/analytics", {"step": ["", "a", "b"], "where": ["{}"]}, "steps[0]", "no event type"),
        ("/analytics", {**_TWO, "window": "two"}, "window", "a whole number"),
        ("/analytics", {**_TWO, "unit": "years"}, "unit", "hours, days"),
        ("/analytics", {**_TWO, "order": "sideways"}, "order", "ordered, strict, any"),
        ("/analytics", {**_TWO, "by": "mood"}, "by", "stage, attribute"),
        ("/analytics", {**_TWO, "window": "91"}, "conversion_window", "at most 90 days"),
        ("/analytics", {**_TWO, "window": "999999999"}, "conversion_window", "must be within"),
        ("/analytics", {**_TWO, "start": "2026-02-10", "end": "2026-02-01"}, "end_date", "before"),
        ("/analytics", {**_TWO, "by": "attribute", "key": ""}, "breakdown.data_key", "dotted"),
        (
            "/analytics",
            {**_TWO, "where": ['{"v": 1, "attr": "plan", "op": "eq", "value": "x"}']},
            "steps[0].condition",
            "src",
        ),
        ("/analytics/retention", {"cohort": "user.created", "period": "year"}, "period", "day"),
        ("/analytics/retention", {"cohort": "user.created", "periods": "0"}, "periods", "1 to"),
        (
            "/analytics/retention",
            {"cohort": "user.created", "return_where": "{"},
            "return_event.condition",
            "is not JSON",
        ),
        (
            "/analytics/retention",
            {"cohort": "user.created", "start": "2026-02-10", "end": "2026-02-01"},
            "end_date",
            "before",
        ),
    ],
)
async def test_a_bad_form_or_a_refused_request_is_a_message_on_the_page(
    client: httpx.AsyncClient, path: str, form: dict[str, Any], field: str, message: str
) -> None:
    if path.endswith("retention"):
        form = {"return": "tracked.login", **form}
    html = await page_of(client, _path(path, form), 400)
    assert '<div class="problem" role="alert">' in html
    found = re.search(rf"<li><code>{re.escape(str(escape(field)))}</code>: ([^<]*)</li>", html)
    assert found is not None and message in found.group(1), html.split("<main>")[1][:3000]
    assert "event-funnel" not in html and 'class="retention"' not in html
    inert(html)


async def test_payloads_typed_into_the_form_come_back_as_text(client: httpx.AsyncClient) -> None:
    form = {"step": [SCRIPT, "tracked.login"], "where": [f'{{"x": "{SCRIPT}"}}', ""]}
    html = await page_of(client, _path("/analytics", form), 400)
    assert "steps[0].event_type" in html  # the service refused the type, naming it
    assert f'value="{escape(SCRIPT)}"' in html
    assert escape(f'{{"x": "{SCRIPT}"}}') in html
    inert(html)
    retention = await page_of(
        client, _path("/analytics/retention", {"cohort": SCRIPT, "return": SCRIPT}), 400
    )
    assert "cohort_event.event_type" in retention and "return_event.event_type" in retention
    inert(retention)


async def test_a_metrics_service_that_is_down_reads_as_unavailable(console_suite: Console) -> None:
    env = {**console_suite.env, "LIFECYCLE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}"}
    config = load_console_config(env)
    calls = Services(config)
    try:
        transport = httpx.ASGITransport(app=create_app(config, calls))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            funnel = await page_of(client, _path("/analytics", _TWO), 503)
            retention = await page_of(client, "/analytics/retention?cohort=user.created", 503)
    finally:
        await calls.close()
    for html in (funnel, retention):
        assert '<strong class="code">UNAVAILABLE</strong>' in html
        assert 'name="step"' in html or 'name="cohort"' in html  # the form, to try again


def test_durations_read_in_their_two_largest_units() -> None:
    def of(seconds: int, nanos: int = 0) -> str:
        return span(duration_pb2.Duration(seconds=seconds, nanos=nanos))

    assert of(0) == "0 s"
    assert of(42) == "42 s"
    assert of(900) == "15 min"
    assert of(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3 d 4 h"
    assert of(3600 + 59, 600_000_000) == "1 h 1 min"
