"""Issue 16's segment page: its condition written as sentences (the JSON
still there), and "explain for a user" (ExplainMembership): each leaf with
the value it read and whether it held, for a member, a non-member, a user
given by email, and users the service does not know."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from markupsafe import escape

from console.app import create_app
from console.calls import Services
from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct
from tests.console.conftest import IMAGE, SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.support import eventually

if TYPE_CHECKING:
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub
else:
    UserServiceAsyncStub = Any


@dataclass(frozen=True)
class Segment:
    id: str
    plan: str
    event_type: str
    member: users_pb2.User
    other: users_pb2.User


async def _user(users: UserServiceAsyncStub, plan: str) -> users_pb2.User:
    reply = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"{uuid.uuid4().hex[:10]}@example.com",
                attributes=dict_to_struct({"plan": plan}),
            )
        )
    )
    return reply.user


@pytest.fixture(scope="module")
async def segment(console_suite: Console) -> Segment:
    """A segment of the users on a plan (a payload) who bought once or more:
    one member, who bought, and one user on another plan who did not."""
    channels = console_suite.channels
    users = users_pb2_grpc.UserServiceStub(channels["users"])
    plan = f"plan-{uuid.uuid4().hex[:6]} {SCRIPT}"
    event_type = f"console.bought_{uuid.uuid4().hex[:6]}"
    member, other = await _user(users, plan), await _user(users, "free")
    await triggers_pb2_grpc.TriggerServiceStub(channels["triggers"]).TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(
                user_id=member.id, event_type=event_type, message_id=str(uuid.uuid4())
            )
        )
    )
    condition = {
        "v": 1,
        "all": [
            {"attr": "plan", "op": "eq", "value": plan},
            {"event": {"type": event_type, "count": {"op": "gte", "value": 1}}},
        ],
    }
    created = await segments_pb2_grpc.SegmentServiceStub(channels["segments"]).CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(
                name=f"buyers {uuid.uuid4().hex[:6]}", conditions=dict_to_struct(condition)
            )
        )
    )
    return Segment(created.segment.id, plan, event_type, member, other)


async def test_the_condition_reads_as_sentences_with_its_json_aside(
    client: httpx.AsyncClient, segment: Segment
) -> None:
    html = await page_of(client, f"/segments/{segment.id}")
    assert (
        f"all of:<ul><li>plan is {escape(segment.plan)}</li>"
        f"<li>at least 1 {segment.event_type} event</li></ul>"
    ) in html
    assert '<details class="condition-json"><summary>As JSON</summary>' in html
    assert escape(f'"type": "{segment.event_type}"') in html
    inert(html)


async def test_a_member_is_explained_leaf_by_leaf(
    client: httpx.AsyncClient, segment: Segment
) -> None:
    path = f"/segments/{segment.id}?explain={segment.member.id}"

    async def counted() -> bool:  # the event reaches the users service on its own
        return "is a member" in await page_of(client, path)

    await eventually(counted)
    html = await page_of(client, path)
    assert f"<code>{segment.member.id}</code></a> is a member" in html
    read = escape(json.dumps(segment.plan))
    held = '<td class="held">yes</td>'
    plan_row = f"<td>plan is {escape(segment.plan)}</td><td><code>{read}</code></td>{held}"
    assert plan_row in html
    assert '<td><code>1</code></td><td class="held">yes</td>' in html  # the count read
    inert(html)


async def test_a_user_given_by_email_who_is_not_a_member(
    client: httpx.AsyncClient, segment: Segment
) -> None:
    html = await page_of(client, f"/segments/{segment.id}?explain={segment.other.email}")
    assert f"<code>{segment.other.id}</code></a> is not a member" in html
    assert (
        "<td>plan is" in html
        and '<td><code>&#34;free&#34;</code></td><td class="failed">no</td>' in html
    )
    assert '<td><code>0</code></td><td class="failed">no</td>' in html  # no event counted
    assert f'value="{segment.other.email}"' in html  # the form keeps what was asked
    inert(html)


@pytest.mark.parametrize(
    ("given", "code"),
    [
        (str(uuid.uuid4()), "NOT_FOUND"),
        (f"{uuid.uuid4().hex}@example.com", "NOT_FOUND"),
        ("not an id <b>", "INVALID_ARGUMENT"),
    ],
)
async def test_a_user_the_service_does_not_know_is_a_message(
    client: httpx.AsyncClient, segment: Segment, given: str, code: str
) -> None:
    html = await page_of(client, f"/segments/{segment.id}?explain={given}")
    assert f'<div class="problem" role="alert">\n  <p><strong class="code">{code}</strong>' in html
    assert "is a member" not in html and "is not a member" not in html
    assert "<b>" not in html
    inert(html)


class _Methods(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """The methods of the calls made, in order."""

    def __init__(self) -> None:
        self.called: list[str] = []

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        self.called.append(client_call_details.method.decode().rsplit("/", 1)[-1])
        return await continuation(client_call_details, request)


async def test_in_segment_leaves_name_their_segments_fetched_in_one_call(
    console_suite: Console,
) -> None:
    segments = segments_pb2_grpc.SegmentServiceStub(console_suite.channels["segments"])
    referenced = []
    for name in (f"power {IMAGE}", "at risk"):
        created = await segments.CreateSegment(
            segments_pb2.CreateSegmentRequest(
                segment=segments_pb2.Segment(
                    name=f"{name} {uuid.uuid4().hex[:6]}",
                    conditions=dict_to_struct({"v": 1, "attr": "plan", "op": "exists"}),
                )
            )
        )
        referenced.append(created.segment)
    power, risk = referenced
    condition = {
        "v": 1,
        "any": [
            {"in_segment": power.id},
            {"all": [{"in_segment": risk.id}, {"not": {"in_segment": power.id}}]},
        ],
    }
    created = await segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(name="either", conditions=dict_to_struct(condition))
        )
    )
    methods = _Methods()
    calls = Services(console_suite.config, [methods])
    try:
        transport = httpx.ASGITransport(app=create_app(console_suite.config, calls))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            html = await page_of(client, f"/segments/{created.segment.id}")
            plain = await page_of(client, f"/segments/{power.id}")
    finally:
        await calls.close()
    linked = f'is in segment <a href="/segments/{power.id}">{escape(power.name)}</a>'
    assert f"<li>{linked}</li>" in html
    assert f'<li>is in segment <a href="/segments/{risk.id}">{escape(risk.name)}</a></li>' in html
    assert f"<li>not:<ul><li>{linked}</li></ul></li>" in html
    inert(html)
    assert "is in segment" not in plain
    # One ListSegments for the three leaves; none for a condition without them.
    assert sorted(methods.called) == sorted(
        ["GetSegment", "ListSegmentMembers", "ListSegments", "GetSegment", "ListSegmentMembers"]
    )
