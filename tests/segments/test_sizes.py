"""A segment's size over time (ListSegmentSizes): each day's count from full
refreshes and from every incremental change of membership (changed users,
CheckMembership, users gone, erases), carried over days without a change,
deleted with the segment, kept as long as the retention says; and every bad
request refused naming its field."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from runtime.clock import ShiftedClock
from runtime.config import ConfigError
from runtime.structs import dict_to_struct
from services.segments import store
from services.segments.maintenance import maintenance
from services.segments.settings import SIZE_RETENTION_VARIABLE, load_settings
from tests.segments.conftest import Suite
from tests.support import error_info, rpc_error, violated_fields


def pro_users(tag: str) -> dict[str, Any]:
    """A condition over this test's users on the pro plan."""
    return {
        "v": 1,
        "all": [
            {"attr": "run", "op": "eq", "value": tag},
            {"attr": "plan", "op": "eq", "value": "pro"},
        ],
    }


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


def noon_tomorrow(clock: ShiftedClock) -> date:
    """Moves the service's clock to noon of the next UTC day, so that no test
    day ends while the test runs; returns that day."""
    day = clock.now().date() + timedelta(days=1)
    clock.advance(datetime.combine(day, time(12), UTC) - clock.now())
    return day


async def sizes(suite: Suite, segment_id: str, first: date, last: date) -> dict[date, int]:
    reply = await suite.segments.ListSegmentSizes(
        segments_pb2.ListSegmentSizesRequest(
            segment_id=segment_id, start_date=first.isoformat(), end_date=last.isoformat()
        )
    )
    return {date.fromisoformat(size.date): size.member_count for size in reply.sizes}


async def set_plan(suite: Suite, user_id: str, plan: str) -> None:
    await suite.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user_id, attributes=dict_to_struct({"plan": plan})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await suite.settle()


async def stored_days(admin: asyncpg.Connection, segment_id: str) -> dict[date, int]:
    rows = await admin.fetch(
        "SELECT day, members FROM segments.segment_sizes WHERE segment_id = $1",
        uuid.UUID(segment_id),
    )
    return {row["day"]: row["members"] for row in rows}


async def test_each_day_has_its_last_count_carried_over_days_without_a_change(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    users = [await suite.create_user({"run": tag, "plan": "pro"}) for _ in range(3)]
    await suite.settle()
    created = noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    assert await sizes(suite, segment.id, created, created) == {created: 0}
    assert (await suite.refresh(segment.id)).member_count == 3
    # Two days later two users leave and one enters: no refresh, the event path.
    clock.advance(timedelta(days=2))
    await set_plan(suite, users[0].id, "free")
    await set_plan(suite, users[1].id, "free")
    await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    # The next day two enter; the day's last count is the one kept.
    clock.advance(timedelta(days=1))
    await set_plan(suite, users[0].id, "pro")
    await set_plan(suite, users[1].id, "pro")
    first, last = created - timedelta(days=2), created + timedelta(days=6)
    reply = await suite.segments.ListSegmentSizes(
        segments_pb2.ListSegmentSizesRequest(
            segment_id=segment.id, start_date=first.isoformat(), end_date=last.isoformat()
        )
    )
    # Nothing before the segment existed, nothing after the service's today.
    assert [(p.date, p.member_count) for p in reply.sizes] == [
        (created.isoformat(), 3),
        ((created + timedelta(days=1)).isoformat(), 3),
        ((created + timedelta(days=2)).isoformat(), 2),
        ((created + timedelta(days=3)).isoformat(), 4),
    ]
    # A carried day tells when its count was recorded: on the day before.
    assert reply.sizes[1].record_time == reply.sizes[0].record_time
    assert reply.sizes[0].record_time.ToDatetime(UTC).date() == created
    # One row per day that changed, the refresh's replacing the creation's zero.
    assert await stored_days(segments_admin, segment.id) == {
        created: 3,
        created + timedelta(days=2): 2,
        created + timedelta(days=3): 4,
    }
    # A range that starts on a day without a change starts from the count before it.
    quiet = created + timedelta(days=1)
    assert await sizes(suite, segment.id, quiet, quiet) == {quiet: 3}
    assert (await suite.refresh(segment.id)).member_count == 4


async def test_a_full_refresh_records_the_exact_count_of_the_day(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    today = noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    await suite.refresh(segment.id)
    # Whatever the day's row says, a refresh writes what the memberships hold.
    await segments_admin.execute(
        "UPDATE segments.segment_sizes SET members = 100 WHERE segment_id = $1",
        uuid.UUID(segment.id),
    )
    await suite.refresh(segment.id)
    assert await sizes(suite, segment.id, today, today) == {today: 1}


async def test_checks_users_gone_and_erases_change_the_size(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    # A user there before the segment is found by CheckMembership, which writes them.
    checked = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    today = noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    stays, gone, erased = [await suite.create_user({"run": tag, "plan": "pro"}) for _ in range(3)]
    await suite.settle()
    assert await sizes(suite, segment.id, today, today) == {today: 3}
    answer = await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=checked.id, segment_id=segment.id)
    )
    assert answer.is_member and not answer.cached
    assert await sizes(suite, segment.id, today, today) == {today: 4}
    # A user the users service no longer has leaves quietly, and the size with them.
    await segments_admin.execute("DELETE FROM users.users WHERE id = $1", uuid.UUID(gone.id))
    await suite.segments.ReevaluateUsers(segments_pb2.ReevaluateUsersRequest(user_ids=[gone.id]))
    assert await sizes(suite, segment.id, today, today) == {today: 3}
    await suite.segments.EraseUserData(segments_pb2.EraseUserDataRequest(user_id=erased.id))
    assert await sizes(suite, segment.id, today, today) == {today: 2}
    assert await suite.members(segment.id) == {stays.id, checked.id}
    assert (await suite.refresh(segment.id)).member_count == 2


async def test_an_erase_waits_for_a_segment_being_deleted_instead_of_deadlocking(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    user = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    await suite.refresh(segment.id)
    segment_id = uuid.UUID(segment.id)
    # On a day without a size yet, which the erase inserts (checking its segment).
    clock.advance(timedelta(days=1))
    # What DeleteSegment does in its transaction: lock the segment's row, then
    # delete it, which deletes its memberships (and sizes) with it.
    async with segments_admin.transaction():
        await segments_admin.execute(
            "SELECT 1 FROM segments.user_segments WHERE id = $1 FOR UPDATE", segment_id
        )
        erase = asyncio.ensure_future(
            suite.segments.EraseUserData(segments_pb2.EraseUserDataRequest(user_id=user.id))
        )
        await asyncio.sleep(0.5)
        assert not erase.done()
        await segments_admin.execute("DELETE FROM segments.user_segments WHERE id = $1", segment_id)
    assert (await erase).erased_count == 0
    assert await stored_days(segments_admin, segment.id) == {}


async def test_a_refresh_waits_for_a_segment_being_deleted_instead_of_deadlocking(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    user = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    await suite.refresh(segment.id)
    segment_id = uuid.UUID(segment.id)
    # The member no longer matches (unknown to the segments service): the next
    # refresh, on a day without a size yet, deletes their membership.
    await segments_admin.execute(
        'UPDATE users.users SET attributes = \'{"plan": "free"}\' WHERE id = $1',
        uuid.UUID(user.id),
    )
    clock.advance(timedelta(days=1))
    async with segments_admin.transaction():
        await segments_admin.execute(
            "SELECT 1 FROM segments.user_segments WHERE id = $1 FOR UPDATE", segment_id
        )
        refresh = asyncio.ensure_future(suite.refresh(segment.id))
        await asyncio.sleep(0.5)
        assert not refresh.done()
        await segments_admin.execute("DELETE FROM segments.user_segments WHERE id = $1", segment_id)
    error = await rpc_error(refresh)
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deletion_waits_for_a_reevaluation_writing_sizes_instead_of_deadlocking(
    suite: Suite, clock: ShiftedClock, segments_admin: asyncpg.Connection, tag: str
) -> None:
    noon_tomorrow(clock)
    segment = await suite.create_segment(pro_users(tag))
    segment_id = uuid.UUID(segment.id)
    await segments_admin.execute("SET search_path = segments")
    async with segments_admin.transaction():
        # What a re-evaluation holds from before it reads until it commits ...
        await store.lock_definitions(segments_admin, [segment_id])
        deletion = asyncio.ensure_future(
            suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=segment.id))
        )
        await asyncio.sleep(0.5)
        assert not deletion.done()
        # ... and the first size it writes on a new day, which checks the segment.
        await store.add_to_sizes(segments_admin, {segment_id: 1}, clock.now() + timedelta(days=1))
    await deletion
    assert await stored_days(segments_admin, segment.id) == {}


async def test_sizes_go_with_their_segment(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    segment = await suite.create_segment(pro_users(tag))
    assert len(await stored_days(segments_admin, segment.id)) == 1
    await suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=segment.id))
    assert await stored_days(segments_admin, segment.id) == {}
    today = datetime.now(UTC).date()
    error = await rpc_error(sizes(suite, segment.id, today, today))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "SEGMENT_NOT_FOUND"


async def test_retention_forgets_old_days_but_the_size_they_carry(
    suite: Suite, segments_admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    segment = await suite.create_segment(pro_users(tag))
    today = datetime.now(UTC).date()
    monkeypatch.setenv(SIZE_RETENTION_VARIABLE, "30")
    await segments_admin.execute(
        "INSERT INTO segments.segment_sizes (segment_id, day, members, recorded_at)"
        " SELECT $1, $2::date - d, d, now() FROM unnest('{40, 35, 31, 29}'::int[]) AS d",
        uuid.UUID(segment.id),
        today,
    )
    await segments_admin.execute("SET search_path = segments")
    lines = await maintenance(segments_admin, today)
    assert "daily segment sizes older than 30 days" in lines[1]
    # The last day before the cutoff stays: the size from then until the next row.
    assert await stored_days(segments_admin, segment.id) == {
        today - timedelta(days=31): 31,
        today - timedelta(days=29): 29,
        today: 0,
    }
    shown = await sizes(suite, segment.id, today - timedelta(days=40), today - timedelta(days=28))
    assert list(shown) == [today - timedelta(days=n) for n in range(31, 27, -1)]
    assert list(shown.values()) == [31, 31, 29, 29]


def test_the_retention_setting_is_read_and_a_bad_one_named() -> None:
    assert load_settings({SIZE_RETENTION_VARIABLE: "30"}).size_retention == timedelta(days=30)
    assert load_settings({}).size_retention == timedelta(days=400)
    assert load_settings({SIZE_RETENTION_VARIABLE: "36525"}).size_retention.days == 36_525
    for bad in ("0", "-3", "1.5", "soon", "36526"):
        with pytest.raises(ConfigError, match=SIZE_RETENTION_VARIABLE):
            load_settings({SIZE_RETENTION_VARIABLE: bad})


async def test_list_segment_sizes_refuses_bad_requests(suite: Suite, tag: str) -> None:
    segment = await suite.create_segment(pro_users(tag))
    today = datetime.now(UTC).date()

    def request(**fields: str) -> segments_pb2.ListSegmentSizesRequest:
        given = {
            "segment_id": segment.id,
            "start_date": today.isoformat(),
            "end_date": today.isoformat(),
        }
        return segments_pb2.ListSegmentSizesRequest(**{**given, **fields})

    year_ago = (today - timedelta(days=365)).isoformat()
    invalid = [
        (request(segment_id="x"), ["segment_id"]),
        (request(segment_id=""), ["segment_id"]),
        (request(start_date="", end_date="soon"), ["start_date", "end_date"]),
        (request(start_date="2026-02-30"), ["start_date"]),
        (request(end_date=(today - timedelta(days=1)).isoformat()), ["end_date"]),
        (request(start_date=(today - timedelta(days=366)).isoformat()), ["end_date"]),
    ]
    for bad, fields in invalid:
        error = await rpc_error(suite.segments.ListSegmentSizes(bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == fields
    # 366 days is the longest range: a leap year.
    assert await sizes(suite, segment.id, date.fromisoformat(year_ago), today) == {today: 0}
    error = await rpc_error(suite.segments.ListSegmentSizes(request(segment_id=str(uuid.uuid4()))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "SEGMENT_NOT_FOUND"
    # A range after today, or before the segment, has no points.
    tomorrow = today + timedelta(days=1)
    assert await sizes(suite, segment.id, tomorrow, tomorrow + timedelta(days=3)) == {}
    yesterday = today - timedelta(days=1)
    assert await sizes(suite, segment.id, yesterday - timedelta(days=3), yesterday) == {}
