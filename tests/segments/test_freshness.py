"""Memberships stay fresh: exact expiry under a clock the test moves, the
scheduler, incremental re-evaluation when the users service reports a change
(through its outbox), the enter and exit events, and a user's erase."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from runtime.clock import ShiftedClock
from runtime.lifecycle_events import RECORD_EVENTS, TRACK_EVENTS
from runtime.structs import dict_to_struct
from services.segments.maintenance import maintenance
from services.segments.settings import SegmentSettings
from tests.segments.conftest import Suite, serve_segments
from tests.support import eventually, free_port, rpc_error

ACTIVATION = stage_pb2.LIFECYCLE_STAGE_ACTIVATION
REVENUE = stage_pb2.LIFECYCLE_STAGE_REVENUE


def tagged(tag: str, *leaves: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "all": [{"attr": "run", "op": "eq", "value": tag}, *leaves]}


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


async def check(
    suite: Suite, user_id: str, segment_id: str
) -> segments_pb2.CheckMembershipResponse:
    return await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=user_id, segment_id=segment_id)
    )


async def user_segments(suite: Suite, user_id: str) -> list[str]:
    response = await suite.segments.ListUserSegments(
        segments_pb2.ListUserSegmentsRequest(user_id=user_id)
    )
    return [m.segment_id for m in response.memberships]


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
async def scheduler(segments_env: dict[str, str], clock: ShiftedClock) -> AsyncIterator[None]:
    """A second segments replica on the same database with its scheduler on."""
    settings = SegmentSettings(scheduler_interval=0.05, refresh_interval=timedelta(days=1))
    async with serve_segments(segments_env, clock, settings, port=free_port()):
        yield


async def test_a_within_last_membership_expires_exactly_when_the_window_passes(
    suite: Suite, clock: ShiftedClock, tag: str
) -> None:
    # The window closes in 10 minutes, before the TTL (an hour) would end the validity.
    signed_up = datetime.now(UTC) - timedelta(days=14, minutes=-10)
    user = await suite.create_user({"run": tag, "signup_at": stamp(signed_up)})
    await suite.settle()
    segment = await suite.create_segment(
        tagged(tag, {"attr": "signup_at", "op": "within_last", "value": "P14D"})
    )
    await suite.refresh(segment.id)
    flip = signed_up + timedelta(days=14, microseconds=1)
    cached = await check(suite, user.id, segment.id)
    assert (cached.is_member, cached.cached) == (True, True)
    assert cached.valid_until.ToDatetime(tzinfo=UTC) == flip
    clock.advance(flip - clock.now() - timedelta(milliseconds=50))
    assert (await check(suite, user.id, segment.id)).cached
    clock.advance(timedelta(milliseconds=60))
    expired = await check(suite, user.id, segment.id)
    assert (expired.is_member, expired.cached) == (False, False)
    assert await user_segments(suite, user.id) == []


async def next_refresh(admin: asyncpg.Connection, segment_id: str) -> datetime | None:
    moment: datetime | None = await admin.fetchval(
        "SELECT next_refresh_at FROM segments.segment_refreshes WHERE segment_id = $1",
        uuid.UUID(segment_id),
    )
    return moment


async def test_the_scheduler_renews_expired_memberships_and_refreshes_due_segments(
    suite: Suite,
    clock: ShiftedClock,
    scheduler: None,
    segments_admin: asyncpg.Connection,
    tag: str,
) -> None:
    recent = await suite.create_user({"run": tag, "seen": stamp(datetime.now(UTC))})
    await suite.settle()
    # New segments are due at once: the scheduler fills them without RefreshSegment.
    window = await suite.create_segment(
        tagged(tag, {"attr": "seen", "op": "within_last", "value": "PT6H"})
    )
    settled = await suite.create_segment(tagged(tag, {"stage_age": {"op": "gt", "value": "PT12H"}}))
    await eventually(lambda: _is_member(suite, recent.id, window.id))
    assert await user_segments(suite, recent.id) == [window.id]
    # The user qualifies for `settled` by time alone, 12 hours after entering their
    # stage: its refresh found that moment and is due then, before the interval (a
    # day), as it is beyond the gap (LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS).
    enters = recent.create_time.ToDatetime(tzinfo=UTC) + timedelta(hours=12, microseconds=1)

    async def due_when_the_user_enters() -> bool:
        return await next_refresh(segments_admin, settled.id) == enters

    await eventually(due_when_the_user_enters)
    # A minute before (the clock runs on): the window closed (an expired membership,
    # renewed away), and the user is not in `settled` yet.
    clock.advance(enters - clock.now() - timedelta(minutes=1))
    await eventually(lambda: _memberships_are(suite, recent.id, []))
    # Then the scheduler refreshes `settled` at that moment, and the user enters.
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _memberships_are(suite, recent.id, [settled.id]))
    # The scheduler works on its own: its changes are the segments service's.
    for segment in (window, settled):
        assert await segment_event_actors(segments_admin, segment.id) == {("service:segments",)}


async def last_refresh(admin: asyncpg.Connection, segment_id: str) -> tuple[datetime, datetime]:
    """When the segment was last refreshed in full, and when it is due next."""
    row = await admin.fetchrow(
        "SELECT evaluated_at, next_refresh_at FROM segments.segment_refreshes"
        " WHERE segment_id = $1",
        uuid.UUID(segment_id),
    )
    assert row is not None
    return row["evaluated_at"], row["next_refresh_at"]


async def test_an_entry_sooner_than_the_gap_waits_for_it(
    suite: Suite,
    clock: ShiftedClock,
    segments_env: dict[str, str],
    segments_admin: asyncpg.Connection,
    tag: str,
) -> None:
    gap = timedelta(minutes=10)
    settings = SegmentSettings(
        scheduler_interval=0.05, refresh_interval=timedelta(days=1), min_refresh_gap=gap
    )
    soon = clock.now() + timedelta(seconds=1)
    user = await suite.create_user({"run": tag, "seen": stamp(soon)})
    await suite.settle()
    async with serve_segments(segments_env, clock, settings, port=free_port()):
        segment = await suite.create_segment(
            tagged(tag, {"attr": "seen", "op": "within_last", "value": "P1D"})
        )

        async def refreshed(segment_id: str) -> bool:
            return (await last_refresh(segments_admin, segment_id))[0] is not None

        # The scheduler fills the new segment: the user enters in a second, but the
        # next refresh waits for the gap.
        await eventually(lambda: refreshed(segment.id))
        as_of, due = await last_refresh(segments_admin, segment.id)
        assert due == as_of + gap
        # Past the user's moment, the scheduler refreshes a segment created then, not this one.
        clock.advance(soon - clock.now() + timedelta(seconds=1))
        later = await suite.create_segment(tagged(tag))
        await eventually(lambda: refreshed(later.id))
        assert await last_refresh(segments_admin, segment.id) == (as_of, due)
        assert await user_segments(suite, user.id) == [later.id]
        # At the gap's end it does, and the user enters.
        clock.advance(due - clock.now())
        both = sorted([segment.id, later.id])
        await eventually(lambda: _memberships_are(suite, user.id, both))


async def _is_member(suite: Suite, user_id: str, segment_id: str) -> bool:
    return segment_id in await user_segments(suite, user_id)


async def _memberships_are(suite: Suite, user_id: str, expected: list[str]) -> bool:
    return await user_segments(suite, user_id) == expected


async def test_changes_of_users_reach_memberships_within_seconds(suite: Suite, tag: str) -> None:
    paying = await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    activated = await suite.create_segment(tagged(tag), (ACTIVATION,))
    user = await suite.create_user({"run": tag, "plan": "free"})
    await eventually(lambda: _memberships_are(suite, user.id, []))
    await suite.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, attributes=dict_to_struct({"plan": "pro"})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await eventually(lambda: _memberships_are(suite, user.id, [paying.id]))
    await suite.users.TransitionStage(
        users_pb2.TransitionStageRequest(user_id=user.id, to_stage=ACTIVATION)
    )
    both = sorted([paying.id, activated.id])
    await eventually(lambda: _memberships_are(suite, user.id, both))
    await suite.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, attributes=dict_to_struct({"plan": "free"})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await eventually(lambda: _memberships_are(suite, user.id, [activated.id]))
    # New users, one at a time or imported, enter at once too.
    born = await suite.create_user({"run": tag, "plan": "pro"}, stage=ACTIVATION)
    await eventually(lambda: _memberships_are(suite, born.id, both))


async def test_only_the_segments_a_change_concerns_are_reevaluated(suite: Suite, tag: str) -> None:
    user = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))

    async def reevaluate(**change: Any) -> segments_pb2.ReevaluateUsersResponse:
        return await suite.segments.ReevaluateUsers(
            segments_pb2.ReevaluateUsersRequest(
                changes=[segments_pb2.UserChange(user_id=user.id, **change)]
            )
        )

    assert (await reevaluate(attribute_keys=["unrelated"])).entered_count == 0
    assert (await reevaluate(stage_changed=True)).entered_count == 0
    assert (await reevaluate(attribute_keys=["plan"])).entered_count == 1
    assert (await reevaluate(attribute_keys=["plan"])).entered_count == 0
    explicit = await suite.segments.ReevaluateUsers(
        segments_pb2.ReevaluateUsersRequest(user_ids=[user.id, str(uuid.uuid4())])
    )
    assert (explicit.entered_count, explicit.exited_count) == (0, 0)


async def waiting_events(
    admin: asyncpg.Connection, segment_id: str
) -> list[metrics_pb2.LifecycleEvent]:
    """The lifecycle events about a segment waiting for the metrics service."""
    found = []
    for row in await admin.fetch(
        "SELECT payload FROM segments.outbox WHERE topic = $1 ORDER BY id", RECORD_EVENTS
    ):
        for event in metrics_pb2.RecordEventsRequest.FromString(row["payload"]).events:
            if event.data["segment_id"] == segment_id:
                assert event.producer == "segments" and event.event_id
                found.append(event)
    return found


async def segment_events(admin: asyncpg.Connection, segment_id: str) -> list[tuple[str, str]]:
    """(type, user) of the lifecycle events about a segment waiting for the metrics service."""
    return [(e.event_type, e.user_id) for e in await waiting_events(admin, segment_id)]


async def segment_event_actors(admin: asyncpg.Connection, segment_id: str) -> set[tuple[str, ...]]:
    """Who the changes of a segment's memberships are attributed to."""
    return {tuple(e.actors) for e in await waiting_events(admin, segment_id)}


async def test_entering_and_leaving_are_sent_to_metrics_and_to_triggers(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    stays = await suite.create_user({"run": tag, "plan": "pro"})
    leaves = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    await suite.refresh(segment.id)
    await suite.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=leaves.id, attributes=dict_to_struct({"plan": "free"})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await eventually(lambda: _memberships_are(suite, leaves.id, []))
    assert sorted(await segment_events(segments_admin, segment.id)) == sorted(
        [
            ("segment.entered", stays.id),
            ("segment.entered", leaves.id),
            ("segment.exited", leaves.id),
        ]
    )
    # The refresh's caller, and the user change's, through the users service.
    assert await segment_event_actors(segments_admin, segment.id) == {
        ("anonymous",),
        ("anonymous", "service:users"),
    }

    async def arrived_at_triggers() -> bool:
        """The same events, as user events the triggers service stored, under the
        lifecycle events' ids; none left in the segments outbox."""
        stored = await segments_admin.fetch(
            "SELECT event_type, user_id::text FROM triggers.events WHERE data->>'segment_id' = $1",
            segment.id,
        )
        waiting = await segments_admin.fetchval(
            "SELECT count(*) FROM segments.outbox WHERE topic = $1", TRACK_EVENTS
        )
        return waiting == 0 and sorted(tuple(r) for r in stored) == sorted(
            [
                ("segment.entered", stays.id),
                ("segment.entered", leaves.id),
                ("segment.exited", leaves.id),
            ]
        )

    await eventually(arrived_at_triggers)


async def test_an_erase_removes_memberships_and_nothing_brings_them_back(
    suite: Suite, tag: str
) -> None:
    user = await suite.create_user({"run": tag})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag))
    await suite.refresh(segment.id)
    assert await user_segments(suite, user.id) == [segment.id]
    # The erase reaches segments before the users service deleted the user (as if
    # a refresh had read the user just before): the tombstone keeps them out.
    erased = await suite.segments.EraseUserData(segments_pb2.EraseUserDataRequest(user_id=user.id))
    assert erased.erased_count == 1
    assert (await suite.refresh(segment.id)).member_count == 0
    await suite.segments.ReevaluateUsers(segments_pb2.ReevaluateUsersRequest(user_ids=[user.id]))
    assert await user_segments(suite, user.id) == []
    error = await rpc_error(check(suite, user.id, segment.id))
    assert error.code().name == "NOT_FOUND"
    again = await suite.segments.EraseUserData(segments_pb2.EraseUserDataRequest(user_id=user.id))
    assert again.erased_count == 0


async def test_delete_user_erases_memberships_through_the_outbox(suite: Suite, tag: str) -> None:
    user = await suite.create_user({"run": tag})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag))
    await suite.refresh(segment.id)
    await suite.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.id))
    await eventually(lambda: _memberships_are(suite, user.id, []))
    assert await suite.members(segment.id) == set()


async def test_an_expired_membership_of_a_user_who_is_gone_is_dropped_quietly(
    suite: Suite,
    clock: ShiftedClock,
    scheduler: None,
    segments_admin: asyncpg.Connection,
    tag: str,
) -> None:
    user = await suite.create_user({"run": tag})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag))
    await eventually(lambda: _memberships_are(suite, user.id, [segment.id]))
    # Gone from the users service, its erase call not arrived yet.
    await segments_admin.execute("DELETE FROM users.users WHERE id = $1", uuid.UUID(user.id))
    # Past the membership's TTL (an hour), before the segment's next full refresh (a day).
    clock.advance(timedelta(hours=2))
    await eventually(lambda: _memberships_are(suite, user.id, []))
    assert ("segment.exited", user.id) not in await segment_events(segments_admin, segment.id)


async def test_maintenance_forgets_tombstones_after_90_days(
    segments_admin: asyncpg.Connection,
) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    await segments_admin.execute(
        "INSERT INTO segments.erased_users (user_id, erased_at)"
        " VALUES ($1, now() - interval '91 days'), ($2, now() - interval '89 days')",
        old,
        recent,
    )
    await segments_admin.execute("SET search_path = segments")
    lines = await maintenance(segments_admin, datetime.now(UTC).date())
    assert lines[0] == "forgot 1 erased users older than 90 days", "the command adds the prefix"
    left = await segments_admin.fetch(
        "SELECT user_id FROM erased_users WHERE user_id = ANY($1::uuid[])", [old, recent]
    )
    assert [row["user_id"] for row in left] == [recent]
