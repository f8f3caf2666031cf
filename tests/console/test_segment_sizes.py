"""A segment's page charts its size over the last 30 days: the page names
the JSON its chart is drawn from, and that JSON is the series ListSegmentSizes
gives, carried over days without a change; an unknown segment is a 404."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct
from tests.console.conftest import Console
from tests.console.test_pages import inert, page_of


async def _segment_of_two(console_suite: Console) -> str:
    """A refreshed segment of two users, with sizes recorded on earlier days:
    five members 40 days ago (before the chart's range), three 10 days ago."""
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    segments = segments_pb2_grpc.SegmentServiceStub(console_suite.channels["segments"])
    plan = f"plan-{uuid.uuid4().hex}"
    for _ in range(2):
        await users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(
                    email=f"{uuid.uuid4().hex[:10]}@example.com",
                    attributes=dict_to_struct({"plan": plan}),
                )
            )
        )
    condition = {"v": 1, "attr": "plan", "op": "eq", "value": plan}
    created = await segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(name="sized", conditions=dict_to_struct(condition))
        )
    )
    segment_id = created.segment.id
    await segments.RefreshSegment(segments_pb2.RefreshSegmentRequest(segment_id=segment_id))
    admin = await asyncpg.connect(console_suite.env["LIFECYCLE_DATABASE_URL"])
    try:
        await admin.execute(
            "INSERT INTO segments.segment_sizes (segment_id, day, members, recorded_at)"
            " SELECT $1, $2::date - d, d / 8, now() FROM unnest('{40, 24}'::int[]) AS d",
            uuid.UUID(segment_id),
            datetime.now(UTC).date(),
        )
    finally:
        await admin.close()
    return segment_id


async def test_the_segment_page_charts_the_sizes_the_api_gives(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    segment_id = await _segment_of_two(console_suite)
    html = await page_of(client, f"/segments/{segment_id}")
    source = f"/segments/{segment_id}/sizes.json"
    assert f'<div id="charts" data-source="{source}">' in html
    assert '<canvas id="chart-size" data-chart="size"' in html
    assert '<script src="/static/overview.js"></script>' in html
    inert(html)
    reply = await client.get(source)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    today = datetime.now(UTC).date()
    first = today - timedelta(days=29)
    api = await segments_pb2_grpc.SegmentServiceStub(
        console_suite.channels["segments"]
    ).ListSegmentSizes(
        segments_pb2.ListSegmentSizesRequest(
            segment_id=segment_id, start_date=first.isoformat(), end_date=today.isoformat()
        )
    )
    series = {size.date: size.member_count for size in api.sizes}
    assert reply.json() == {"days": list(series), "charts": {"size": {"members": series}}}
    # Thirty days: five carried from before the range, three from 24 days ago, two today.
    days = [(first + timedelta(days=n)).isoformat() for n in range(30)]
    assert list(series) == days
    assert [series[day] for day in days] == [5] * 5 + [3] * 24 + [2]


async def test_the_sizes_of_an_unknown_segment_are_not_found(client: httpx.AsyncClient) -> None:
    reply = await client.get(f"/segments/{uuid.uuid4()}/sizes.json")
    assert reply.status_code == 404
    assert "NOT_FOUND" in reply.text
