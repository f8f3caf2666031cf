"""Segments on what people did (docs/conditions.md, "What people did"), through
the real services: an event tracked at the triggers service reaches the users
service (RecordUserEvents, from the triggers outbox), which asks the segments
service to re-evaluate the person (ReevaluateUsers, from its outbox): the
person enters on the event path, with no refresh, and leaves at the exact
moment the window lets the event that qualified them go."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2
from runtime.clock import ShiftedClock
from runtime.structs import dict_to_struct, set_timestamp, struct_to_dict
from tests.segments.conftest import Suite
from tests.support import eventually, rpc_error, violated_fields

pytestmark = pytest.mark.users

# Bought at least twice in the last week, 10 or more each time.
TWICE_THIS_WEEK = {
    "event": {
        "type": "purchase",
        "where": {"attr": "amount", "op": "gte", "value": 10},
        "window": {"last": "P7D"},
        "count": {"op": "gte", "value": 2},
    }
}


@pytest.fixture(autouse=True)
async def forget_segments(suite: Suite, segments_admin: asyncpg.Connection) -> AsyncIterator[None]:
    """Deletes the segments a test made: later modules re-evaluate thousands of
    new users against every segment, and time it (the settle of their outbox)."""
    started = await segments_admin.fetchval("SELECT clock_timestamp()")
    yield
    for row in await segments_admin.fetch(
        "SELECT id FROM segments.user_segments WHERE created_at >= $1", started
    ):
        request = segments_pb2.DeleteSegmentRequest(segment_id=str(row["id"]))
        await suite.segments.DeleteSegment(request)


def tagged(tag: str, *leaves: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "all": [{"attr": "run", "op": "eq", "value": tag}, *leaves]}


async def track(
    segment_ports: dict[str, int], user_id: str, kind: str, at: datetime, data: dict[str, Any]
) -> None:
    event = triggers_pb2.Event(
        user_id=user_id, event_type=kind, data=dict_to_struct(data), message_id=uuid.uuid4().hex
    )
    set_timestamp(event.event_time, at)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{segment_ports['triggers']}") as channel:
        stub = triggers_pb2_grpc.TriggerServiceStub(channel)
        await stub.TrackEvent(triggers_pb2.TrackEventRequest(event=event))


async def delivered(admin: asyncpg.Connection) -> None:
    """Waits until the triggers service sent its events to the users service and
    the users service its re-evaluations to the segments service."""

    async def empty() -> bool:
        waiting: int = await admin.fetchval(
            "SELECT (SELECT count(*) FROM triggers.outbox WHERE topic = 'users.record_user_events')"
            " + (SELECT count(*) FROM users.outbox WHERE topic LIKE 'segments.%')"
        )
        return waiting == 0

    await eventually(empty)


async def membership(suite: Suite, user_id: str, segment_id: str) -> segments_pb2.Membership | None:
    reply = await suite.segments.ListUserSegments(
        segments_pb2.ListUserSegmentsRequest(user_id=user_id)
    )
    return next((m for m in reply.memberships if m.segment_id == segment_id), None)


async def test_the_second_purchase_brings_a_person_in_and_the_window_takes_them_out(
    suite: Suite, clock: ShiftedClock, segment_ports: dict[str, int],
    segments_admin: asyncpg.Connection,
) -> None:  # fmt: skip
    tag = uuid.uuid4().hex
    user = await suite.create_user({"run": tag})
    segment = await suite.create_segment(tagged(tag, TWICE_THIS_WEEK))
    await suite.refresh(segment.id)
    now = datetime.now(UTC)
    # The first leaves the week in 10 minutes, before the TTL (an hour) would end it.
    first, second = now - timedelta(days=7, minutes=-10), now - timedelta(hours=2)
    await track(segment_ports, user.id, "purchase", first, {"amount": 12})
    # Too small to count, and another type: neither qualifies.
    await track(segment_ports, user.id, "purchase", now - timedelta(hours=1), {"amount": 5})
    await track(segment_ports, user.id, "login", now - timedelta(hours=1), {"amount": 50})
    await delivered(segments_admin)
    assert await membership(suite, user.id, segment.id) is None
    await track(segment_ports, user.id, "purchase", second, {"amount": 10})
    await delivered(segments_admin)
    member = await membership(suite, user.id, segment.id)
    assert member is not None
    # The older of the two leaves the week first: then they are one.
    leaves = first + timedelta(days=7, microseconds=1)
    assert member.valid_until.ToDatetime(tzinfo=UTC) == leaves
    explained = await suite.segments.ExplainMembership(
        segments_pb2.ExplainMembershipRequest(user_id=user.id, segment_id=segment.id)
    )
    read = {leaf.path: leaf.actual_value.number_value for leaf in explained.leaves}
    assert (explained.is_member, read["all[1]"]) == (True, 2)
    # Its exact moment is asserted above; a margin either side, as a loaded
    # machine may take a while between the move and the call.
    clock.advance(leaves - clock.now() - timedelta(minutes=1))
    assert (await check(suite, user.id, segment.id)).cached
    clock.advance(timedelta(minutes=2))
    expired = await check(suite, user.id, segment.id)
    assert (expired.is_member, expired.cached) == (False, False)
    assert await membership(suite, user.id, segment.id) is None


async def check(
    suite: Suite, user_id: str, segment_id: str
) -> segments_pb2.CheckMembershipResponse:
    return await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=user_id, segment_id=segment_id)
    )


async def test_a_refresh_agrees_with_the_event_path_and_never_is_a_count_of_zero(
    suite: Suite, segment_ports: dict[str, int], segments_admin: asyncpg.Connection
) -> None:
    tag = uuid.uuid4().hex
    buyer, browser = await suite.create_user({"run": tag}), await suite.create_user({"run": tag})
    now = datetime.now(UTC)
    for hours in (30, 20):
        await track(
            segment_ports, buyer.id, "purchase", now - timedelta(hours=hours), {"amount": 99}
        )
    await delivered(segments_admin)
    never = await suite.create_segment(
        tagged(tag, {"event": {"type": "purchase", "count": {"op": "eq", "value": 0}}})
    )
    recent = await suite.create_segment(
        tagged(tag, {"event": {"type": "purchase", "last": {"op": "within_last", "value": "P1D"}}})
    )
    # A family is the types under it: purchase.refund, not purchase.
    refunds = await suite.create_segment(
        tagged(tag, {"event": {"type": "purchase.*", "count": {"op": "gte", "value": 1}}})
    )
    buyers = await suite.create_segment(tagged(tag, TWICE_THIS_WEEK))
    for segment in (never, recent, refunds, buyers):
        await suite.refresh(segment.id)
    assert await suite.members(never.id) == {browser.id}
    assert await suite.members(recent.id) == {buyer.id}
    assert await suite.members(refunds.id) == set()
    assert await suite.members(buyers.id) == {buyer.id}


async def test_event_leaves_are_checked_and_each_problem_named(suite: Suite) -> None:
    purchases: dict[str, Any] = {"type": "purchase"}
    at_least_one = {"count": {"op": "gte", "value": 1}}
    leaves = [
        {"type": "purchase*", **at_least_one},
        {**purchases, "window": {"last": "P401D"}, **at_least_one},
        {**purchases, "count": {"op": "most", "value": -1}},
        {**purchases, "last": {"op": "within_last", "value": "P7D"}, "window": {"last": "P1D"}},
        {**purchases, "where": {"stage": {"op": "eq", "value": "Revenue"}}, **at_least_one},
        purchases,
    ]
    bad = {"v": 1, "all": [{"event": leaf} for leaf in leaves]}
    error = await rpc_error(suite.create_segment(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [
        "segment.conditions.all[0].event.type",
        "segment.conditions.all[1].event.window.last",
        "segment.conditions.all[2].event.count.op",
        "segment.conditions.all[2].event.count.value",
        "segment.conditions.all[3].event.window",
        "segment.conditions.all[4].event.where",
        "segment.conditions.all[5].event",
    ]
    condition = tagged(uuid.uuid4().hex, TWICE_THIS_WEEK)
    valid = await suite.create_segment(condition)
    assert struct_to_dict(valid.conditions) == condition


async def test_a_window_anchored_on_an_attribute_follows_the_attribute_and_explains_its_count(
    suite: Suite, segment_ports: dict[str, int], segments_admin: asyncpg.Connection
) -> None:
    # "Bought within 14 days of signing up" (docs/conditions.md, "What people did").
    first_fortnight = {
        "event": {
            "type": "purchase",
            "window": {"within": "P14D", "after": {"attr": "signup_at"}},
            "count": {"op": "gte", "value": 1},
        }
    }
    tag, now = uuid.uuid4().hex, datetime.now(UTC)
    signed_up = now - timedelta(days=20)
    attributes = {"run": tag, "signup_at": signed_up.isoformat().replace("+00:00", "Z")}
    quick, late = await suite.create_user(attributes), await suite.create_user(attributes)
    segment = await suite.create_segment(tagged(tag, first_fortnight))
    await suite.refresh(segment.id)
    await track(segment_ports, quick.id, "purchase", signed_up + timedelta(days=14), {})
    await track(segment_ports, late.id, "purchase", signed_up + timedelta(days=15), {})
    await delivered(segments_admin)
    # The event path lets the quick buyer in; the window is closed, so time
    # alone never changes the answer: valid_until is the TTL's (an hour).
    member = await membership(suite, quick.id, segment.id)
    assert member is not None
    assert member.valid_until.ToDatetime(tzinfo=UTC) >= now + timedelta(minutes=59)
    assert await membership(suite, late.id, segment.id) is None
    explained = await suite.segments.ExplainMembership(
        segments_pb2.ExplainMembershipRequest(user_id=late.id, segment_id=segment.id)
    )
    read = {leaf.path: leaf.actual_value.number_value for leaf in explained.leaves}
    assert (explained.is_member, read["all[1]"]) == (False, 0)
    # A later signup moves the window over the late purchase: the attribute's
    # change re-evaluates the person, and a refresh agrees.
    later_signup = (signed_up + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    await suite.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(
                id=late.id, attributes=dict_to_struct({**attributes, "signup_at": later_signup})
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await delivered(segments_admin)
    assert await membership(suite, late.id, segment.id) is not None
    await suite.refresh(segment.id)
    assert await suite.members(segment.id) == {quick.id, late.id}
