"""The segments and triggers pages: their lists, a segment with its condition
and members, a trigger with its evaluations; names, conditions and event data
holding payloads are shown as text."""

from __future__ import annotations

import uuid

import httpx
from markupsafe import escape

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct
from tests.console.conftest import IMAGE, SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.support import eventually


async def test_a_segment_shows_its_condition_and_members(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    segments = segments_pb2_grpc.SegmentServiceStub(console_suite.channels["segments"])
    plan = f"plan-{uuid.uuid4().hex[:6]} {SCRIPT}"
    member = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"{uuid.uuid4().hex[:10]}@example.com",
                attributes=dict_to_struct({"plan": plan}),
            )
        )
    )
    created = await segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(
                name=f"on the plan {IMAGE}",
                conditions=dict_to_struct({"v": 1, "attr": "plan", "op": "eq", "value": plan}),
            )
        )
    )
    segment = created.segment
    await segments.RefreshSegment(segments_pb2.RefreshSegmentRequest(segment_id=segment.id))
    listed = await page_of(client, "/segments")
    assert f'href="/segments/{segment.id}"' in listed
    inert(listed)

    async def member_shown() -> bool:
        return f"/users/{member.user.id}" in await page_of(client, f"/segments/{segment.id}")

    await eventually(member_shown)
    html = await page_of(client, f"/segments/{segment.id}")
    assert "&lt;script&gt;" in html  # the condition's value
    inert(html)
    profile = await page_of(client, f"/users/{member.user.id}")
    assert f"<li>{escape(segment.name)}</li>" in profile
    inert(profile)


async def test_a_trigger_shows_its_evaluations_and_why_nothing_started(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    triggers = triggers_pb2_grpc.TriggerServiceStub(console_suite.channels["triggers"])
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    event_type = f"console.test_{uuid.uuid4().hex[:6]}"
    created = await triggers.CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(
                name=f"on test {SCRIPT}",
                event_type=event_type,
                workflow_id=console_suite.seeded.workflow.id,
            )
        )
    )
    trigger = created.trigger
    user = await users.CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com"))
    )
    for _ in range(2):  # the second finds the first execution running
        await triggers.TrackEvent(
            triggers_pb2.TrackEventRequest(
                event=triggers_pb2.Event(
                    user_id=user.user.id,
                    event_type=event_type,
                    data=dict_to_struct({"note": IMAGE}),
                    message_id=str(uuid.uuid4()),
                )
            )
        )
    assert f'href="/triggers/{trigger.id}"' in await page_of(client, "/triggers")

    async def both_shown() -> bool:
        html = await page_of(client, f"/triggers/{trigger.id}")
        return 'started <a href="/executions/' in html and "nothing: " in html

    await eventually(both_shown)
    html = await page_of(client, f"/triggers/{trigger.id}")
    assert "on test &lt;script&gt;" in html
    inert(html)
