"""Issue 16's segment page: its condition written as sentences (the JSON
still there), and "explain for a user" (ExplainMembership): each leaf with
the value it read and whether it held, for a member, a non-member, a user
given by email, and users the service does not know."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from markupsafe import escape

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct
from tests.console.conftest import SCRIPT, Console
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
