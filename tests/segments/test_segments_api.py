"""The segments service's RPCs over real gRPC, with a real users service and
PostgreSQL: definitions, previews, refreshes, the membership cache and its
reads, explanations, references between segments, and every bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from runtime.structs import dict_to_struct, struct_to_dict
from services.segments import handlers, store
from services.users.handlers import UserMatcher
from tests.segments.conftest import Suite
from tests.support import error_info, eventually, rpc_error, violated_fields

ACTIVATION = stage_pb2.LIFECYCLE_STAGE_ACTIVATION
RETENTION = stage_pb2.LIFECYCLE_STAGE_RETENTION
REVENUE = stage_pb2.LIFECYCLE_STAGE_REVENUE


def tagged(tag: str, *leaves: dict[str, Any]) -> dict[str, Any]:
    """A condition over this test's users only."""
    return {"v": 1, "all": [{"attr": "run", "op": "eq", "value": tag}, *leaves]}


def nested(depth: int) -> dict[str, Any]:
    """A leaf under `depth - 1` nots: `depth` levels."""
    node: dict[str, Any] = {"attr": "a", "op": "exists"}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


async def pro_member_and_segment(
    suite: Suite, tag: str
) -> tuple[users_pb2.User, segments_pb2.Segment]:
    """A user on the pro plan, and a segment of the run's pro users."""
    member = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    return member, segment


async def membership_answer(suite: Suite, user_id: str, segment_id: str) -> tuple[bool, bool]:
    """CheckMembership's answer: whether a member, and whether from the cache."""
    checked = await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=user_id, segment_id=segment_id)
    )
    return checked.is_member, checked.cached


async def test_create_get_and_update_a_segment(suite: Suite, tag: str) -> None:
    conditions = tagged(tag, {"attr": "plan", "op": "in", "value": ["pro", "team"]})
    created = await suite.create_segment(conditions, (REVENUE, ACTIVATION), name=" Paying ")
    assert uuid.UUID(created.id)
    assert created.name == "Paying"
    assert struct_to_dict(created.conditions) == conditions
    assert list(created.lifecycle_stages) == [ACTIVATION, REVENUE]
    assert not created.HasField("evaluate_time")
    got = (
        await suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=created.id))
    ).segment
    assert got == created
    renamed = await suite.segments.UpdateSegment(
        segments_pb2.UpdateSegmentRequest(
            segment=segments_pb2.Segment(id=created.id, name="Payers", description="who pays"),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "description"]),
        )
    )
    assert (renamed.segment.name, renamed.segment.description) == ("Payers", "who pays")
    assert struct_to_dict(renamed.segment.conditions) == conditions
    widened = await suite.segments.UpdateSegment(
        segments_pb2.UpdateSegmentRequest(
            segment=segments_pb2.Segment(id=created.id, conditions=dict_to_struct(tagged(tag)))
        )
    )
    assert struct_to_dict(widened.segment.conditions) == tagged(tag)
    assert widened.segment.name == "Payers"
    assert list(widened.segment.lifecycle_stages) == [ACTIVATION, REVENUE]


async def test_a_repeated_request_id_returns_the_first_segment(suite: Suite, tag: str) -> None:
    request = segments_pb2.CreateSegmentRequest(
        segment=segments_pb2.Segment(name="once", conditions=dict_to_struct(tagged(tag))),
        request_id=str(uuid.uuid4()),
    )
    first = await suite.segments.CreateSegment(request)
    again = await suite.segments.CreateSegment(request)
    assert again.segment.id == first.segment.id
    request.segment.name = "changed"
    error = await rpc_error(suite.segments.CreateSegment(request))
    assert violated_fields(error) == ["request_id"]


@pytest.mark.parametrize(
    ("segment", "field"),
    [
        (segments_pb2.Segment(conditions=dict_to_struct({"v": 1, "all": []})), "segment.name"),
        (
            segments_pb2.Segment(name="x" * 256, conditions=dict_to_struct({"v": 1, "all": []})),
            "segment.name",
        ),
        (segments_pb2.Segment(name="no conditions"), "segment.conditions"),
        (
            segments_pb2.Segment(
                name="x", conditions=dict_to_struct({"v": 1, "all": [{"attr": "a", "op": "~"}]})
            ),
            "segment.conditions.all[0].op",
        ),
        (
            segments_pb2.Segment(
                name="x",
                conditions=dict_to_struct({"v": 1, "attr": "a", "op": "regex", "value": "(?<=a)b"}),
            ),
            "segment.conditions.value",
        ),
        (
            segments_pb2.Segment(
                name="x", conditions=dict_to_struct({"v": 1, "attr": "a", "op": "changed"})
            ),
            "segment.conditions.op",
        ),
        (
            segments_pb2.Segment(
                name="x",
                conditions=dict_to_struct({"v": 1, "all": [{"in_segment": str(uuid.uuid4())}]}),
            ),
            "segment.conditions.all[0]",
        ),
        (
            segments_pb2.Segment(name="x", conditions=dict_to_struct({"v": 1, **nested(11)})),
            "segment.conditions" + ".not" * 10,
        ),
        (
            segments_pb2.Segment(
                name="x",
                conditions=dict_to_struct(
                    {"v": 1, "all": [{"attr": "sku", "op": "regex", "value": "a" * 257}]}
                ),
            ),
            "segment.conditions.all[0].value",
        ),
        (
            segments_pb2.Segment(
                name="x",
                conditions=dict_to_struct({"v": 1, "all": []}),
                lifecycle_stages=[17],  # type: ignore[list-item]
            ),
            "segment.lifecycle_stages[0]",
        ),
        (
            segments_pb2.Segment(
                name="x", description="d" * 4097, conditions=dict_to_struct({"v": 1, "all": []})
            ),
            "segment.description",
        ),
    ],
)
async def test_create_refuses_bad_segments(
    suite: Suite, segment: segments_pb2.Segment, field: str
) -> None:
    error = await rpc_error(
        suite.segments.CreateSegment(segments_pb2.CreateSegmentRequest(segment=segment))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(error)


async def test_create_update_and_lookups_refuse_bad_requests(suite: Suite, tag: str) -> None:
    error = await rpc_error(suite.segments.CreateSegment(segments_pb2.CreateSegmentRequest()))
    assert violated_fields(error) == ["segment"]
    segment = await suite.create_segment(tagged(tag))
    for mask, field in ((["id"], "update_mask"), ([], "update_mask")):
        error = await rpc_error(
            suite.segments.UpdateSegment(
                segments_pb2.UpdateSegmentRequest(
                    segment=segments_pb2.Segment(id=segment.id),
                    update_mask=field_mask_pb2.FieldMask(paths=mask),
                )
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == [field]
    missing = str(uuid.uuid4())
    calls: list[Awaitable[Any]] = [
        suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=missing)),
        suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=missing)),
        suite.segments.RefreshSegment(segments_pb2.RefreshSegmentRequest(segment_id=missing)),
        suite.segments.UpdateSegment(
            segments_pb2.UpdateSegmentRequest(segment=segments_pb2.Segment(id=missing, name="x"))
        ),
        suite.segments.ListSegmentMembers(
            segments_pb2.ListSegmentMembersRequest(segment_id=missing)
        ),
        suite.segments.CheckMembership(
            segments_pb2.CheckMembershipRequest(user_id=missing, segment_id=missing)
        ),
        suite.segments.ExplainMembership(
            segments_pb2.ExplainMembershipRequest(user_id=missing, segment_id=missing)
        ),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(error).reason == "SEGMENT_NOT_FOUND"
    invalid: list[tuple[Awaitable[Any], list[str]]] = [
        (suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id="x")), ["segment_id"]),
        (
            suite.segments.CheckMembership(segments_pb2.CheckMembershipRequest(user_id="x")),
            ["user_id", "segment_id"],
        ),
        (
            suite.segments.ReevaluateUsers(segments_pb2.ReevaluateUsersRequest(user_ids=["x"])),
            ["user_ids[0]"],
        ),
        (suite.segments.EraseUserData(segments_pb2.EraseUserDataRequest()), ["user_id"]),
        (
            suite.segments.ListSegments(segments_pb2.ListSegmentsRequest(page_size=-1)),
            ["page_size"],
        ),
        (
            suite.segments.ListSegmentMembers(
                segments_pb2.ListSegmentMembersRequest(segment_id=segment.id, page_token="junk")
            ),
            ["page_token"],
        ),
    ]
    for call, fields in invalid:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == fields


async def test_list_segments_filters_by_stage_and_pages(suite: Suite, tag: str) -> None:
    ids = [
        (await suite.create_segment(tagged(tag), (RETENTION,), name=f"retention {n}")).id
        for n in range(3)
    ]
    other = await suite.create_segment(tagged(tag), (REVENUE,))
    request = segments_pb2.ListSegmentsRequest(page_size=2, lifecycle_stages=[RETENTION])
    pages = []
    while True:
        response = await suite.segments.ListSegments(request)
        pages.append([s.id for s in response.segments])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    found = [segment_id for page in pages for segment_id in page]
    assert set(ids) <= set(found) and other.id not in found
    assert all(len(page) <= 2 for page in pages)
    other_filter = segments_pb2.ListSegmentsRequest(
        page_token=request.page_token or "x", lifecycle_stages=[REVENUE]
    )
    error = await rpc_error(suite.segments.ListSegments(other_filter))
    assert violated_fields(error) == ["page_token"]


async def test_preview_counts_and_samples_without_saving(suite: Suite, tag: str) -> None:
    pros = {(await suite.create_user({"run": tag, "plan": "pro"})).id for _ in range(3)}
    await suite.create_user({"run": tag, "plan": "free"})
    conditions = dict_to_struct(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    preview = await suite.segments.PreviewSegment(
        segments_pb2.PreviewSegmentRequest(conditions=conditions, sample_size=2)
    )
    assert preview.estimated_size == 3
    assert len(preview.sample_user_ids) == 2 and set(preview.sample_user_ids) <= pros
    in_revenue = await suite.segments.PreviewSegment(
        segments_pb2.PreviewSegmentRequest(conditions=conditions, lifecycle_stages=[REVENUE])
    )
    assert (in_revenue.estimated_size, list(in_revenue.sample_user_ids)) == (0, [])
    for request, field in (
        (segments_pb2.PreviewSegmentRequest(), "conditions"),
        (segments_pb2.PreviewSegmentRequest(conditions=conditions, sample_size=101), "sample_size"),
        (
            segments_pb2.PreviewSegmentRequest(
                conditions=dict_to_struct({"v": 1, "attr": "a", "op": "gt", "value": "1"})
            ),
            "conditions.value",
        ),
    ):
        error = await rpc_error(suite.segments.PreviewSegment(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(error)


async def test_refresh_applies_enter_and_exit_sets(suite: Suite, tag: str) -> None:
    pro = await suite.create_user({"run": tag, "plan": "pro", "seats": 5})
    team = await suite.create_user({"run": tag, "plan": "team", "seats": 1})
    await suite.create_user({"run": tag, "plan": "free"})
    await suite.settle()
    segment = await suite.create_segment(
        tagged(tag, {"attr": "plan", "op": "in", "value": ["pro", "team"]})
    )
    first = await suite.refresh(segment.id)
    assert (first.entered_count, first.exited_count, first.member_count) == (2, 0, 2)
    assert await suite.members(segment.id) == {pro.id, team.id}
    again = await suite.refresh(segment.id)
    assert (again.entered_count, again.exited_count, again.member_count) == (0, 0, 2)
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "seats", "op": "gte", "value": 2})
    )
    changed = await suite.refresh(segment.id)
    assert (changed.entered_count, changed.exited_count, changed.member_count) == (0, 1, 1)
    assert await suite.members(segment.id) == {pro.id}
    got = (
        await suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=segment.id))
    ).segment
    assert got.member_count == 1
    assert got.evaluate_time == changed.evaluate_time


async def test_a_refresh_of_many_users_applies_in_batches(suite: Suite, tag: str) -> None:
    rows = [
        users_pb2.UserImport(
            email=f"many-{tag}-{n}@example.com",
            attributes=dict_to_struct({"run": tag, "n": n}),
        )
        for n in range(12_000)
    ]

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(users=rows)

    await suite.users.ImportUsers(stream())
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "n", "op": "lt", "value": 11_000}))
    first = await suite.refresh(segment.id)
    assert (first.entered_count, first.member_count) == (11_000, 11_000)
    await suite.change_conditions(segment.id, tagged(tag, {"attr": "n", "op": "gte", "value": 500}))
    second = await suite.refresh(segment.id)
    assert (second.entered_count, second.exited_count, second.member_count) == (1000, 500, 11_500)


async def test_a_refresh_diffs_each_batch_with_the_members_of_its_range(
    suite: Suite, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 3 matches and 2 exits per transaction: entries and exits fall in
    # every range, before the first match and after the last, and ranges exit
    # more members than one transaction deletes.
    monkeypatch.setattr(UserMatcher, "BATCH_SIZE", 3)
    monkeypatch.setattr(handlers, "EXIT_BATCH", 2)
    users = {(await suite.create_user({"run": tag, "n": n})).id: n for n in range(40)}
    await suite.settle()

    segment = await suite.create_segment(tagged(tag, {"attr": "n", "op": "lt", "value": 20}))
    first = await suite.refresh(segment.id)
    assert (first.entered_count, first.exited_count, first.member_count) == (20, 0, 20)
    for low, high in [(10, 30), (0, 40), (35, 38), (40, 41)]:
        before = await suite.members(segment.id)
        window = [
            {"attr": "n", "op": "gte", "value": low},
            {"attr": "n", "op": "lt", "value": high},
        ]
        await suite.change_conditions(segment.id, tagged(tag, *window))
        refreshed = await suite.refresh(segment.id)
        expected = {user_id for user_id, n in users.items() if low <= n < high}
        assert await suite.members(segment.id) == expected
        counts = (refreshed.entered_count, refreshed.exited_count, refreshed.member_count)
        assert counts == (len(expected - before), len(before - expected), len(expected))


async def test_a_refresh_renews_the_members_whose_validity_runs_out_before_the_next(
    suite: Suite, tag: str
) -> None:
    member, segment = await pro_member_and_segment(suite, tag)
    await suite.refresh(segment.id)

    async def valid_until() -> datetime:
        listed = await suite.segments.ListSegmentMembers(
            segments_pb2.ListSegmentMembersRequest(segment_id=segment.id)
        )
        assert [m.user_id for m in listed.memberships] == [member.id]
        return listed.memberships[0].valid_until.ToDatetime(tzinfo=UTC)

    # The TTL (an hour) caps a membership time alone never ends.
    first = await valid_until()
    suite.clock.advance(timedelta(minutes=30))
    await suite.refresh(segment.id)
    assert await valid_until() == first
    # Within the refresh interval (5 minutes) of running out: renewed.
    suite.clock.advance(timedelta(minutes=26))
    renewed = await suite.refresh(segment.id)
    assert await valid_until() == renewed.evaluate_time.ToDatetime(tzinfo=UTC) + timedelta(hours=1)


async def test_a_refresh_shrinks_a_validity_that_time_now_ends_sooner(
    suite: Suite, tag: str
) -> None:
    seen = (suite.clock.now() - timedelta(hours=23, minutes=30)).replace(microsecond=0)
    member = await suite.create_user({"run": tag, "seen": seen.strftime("%Y-%m-%dT%H:%M:%SZ")})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "seen", "op": "exists"}))
    first = await suite.refresh(segment.id)
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "seen", "op": "within_last", "value": "P1D"})
    )
    await suite.refresh(segment.id)
    listed = await suite.segments.ListSegmentMembers(
        segments_pb2.ListSegmentMembersRequest(segment_id=segment.id)
    )
    [membership] = listed.memberships
    assert membership.user_id == member.id
    # Capped at the TTL before; now when the window passes the moment.
    leaves = seen + timedelta(days=1, microseconds=1)
    assert first.evaluate_time.ToDatetime(tzinfo=UTC) + timedelta(hours=1) > leaves
    assert membership.valid_until.ToDatetime(tzinfo=UTC) == leaves


@pytest.mark.parametrize(
    ("after", "through"),
    [
        (None, None),
        ("00000000-0000-4000-8000-000000000000", None),
        (None, "ffffffff-0000-4000-8000-000000000000"),
    ],
)
async def test_a_refresh_reads_a_range_of_members_along_the_index(
    segments_admin: asyncpg.Connection, after: str | None, through: str | None
) -> None:
    # In user order without a sort: a range of many members is read a part at a
    # time, each part costing its own size, not the range's. (A bitmap scan and a
    # sort is what the planner picks for the few rows here.)
    await segments_admin.execute("SET search_path = segments; SET enable_bitmapscan = off")
    sql, params = store.cached_members_statement(uuid.uuid4(), after, through, 5000)
    explain = f"EXPLAIN (FORMAT JSON) {sql}"
    [explained] = json.loads(await segments_admin.fetchval(explain, *params))
    limit = explained["Plan"]
    assert limit["Node Type"] == "Limit"
    [scan] = limit["Plans"]
    assert (scan["Node Type"], scan["Index Name"]) == ("Index Scan", "idx_memberships_segment_user")


async def test_check_membership_answers_from_the_cache_while_valid(suite: Suite, tag: str) -> None:
    member = await suite.create_user({"run": tag, "plan": "pro"})
    outsider = await suite.create_user({"run": tag, "plan": "free"})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    await suite.refresh(segment.id)

    async def check(user_id: str) -> segments_pb2.CheckMembershipResponse:
        return await suite.segments.CheckMembership(
            segments_pb2.CheckMembershipRequest(user_id=user_id, segment_id=segment.id)
        )

    cached = await check(member.id)
    assert (cached.is_member, cached.cached) == (True, True)
    assert cached.valid_until.ToDatetime() > cached.evaluate_time.ToDatetime()
    live = await check(outsider.id)
    assert (live.is_member, live.cached) == (False, False)
    # A changed definition makes the cache stale at once, before any refresh.
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "plan", "op": "eq", "value": "free"})
    )
    stale = await check(member.id)
    assert (stale.is_member, stale.cached) == (False, False)
    entered = await check(outsider.id)
    assert (entered.is_member, entered.cached) == (True, False)
    assert (await check(outsider.id)).cached
    assert await suite.members(segment.id) == {outsider.id}
    error = await rpc_error(check(str(uuid.uuid4())))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "USER_NOT_FOUND"


async def test_a_refresh_after_a_change_confirms_the_members_it_keeps(
    suite: Suite, tag: str
) -> None:
    stays = await suite.create_user({"run": tag, "plan": "pro", "seats": 5})
    leaves = await suite.create_user({"run": tag, "plan": "pro", "seats": 1})
    await suite.settle()
    segment = await suite.create_segment(tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}))
    await suite.refresh(segment.id)
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "seats", "op": "gte", "value": 3})
    )
    refreshed = await suite.refresh(segment.id)
    assert (refreshed.entered_count, refreshed.exited_count) == (0, 1)
    # The member the refresh kept is answered from the cache, as confirmed by it,
    # though its row was not rewritten.
    checked = await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=stays.id, segment_id=segment.id)
    )
    assert (checked.is_member, checked.cached) == (True, True)
    assert checked.evaluate_time == refreshed.evaluate_time
    listed = await suite.segments.ListUserSegments(
        segments_pb2.ListUserSegmentsRequest(user_id=stays.id)
    )
    assert [m.evaluate_time for m in listed.memberships] == [refreshed.evaluate_time]
    # No negative cache: a non-member is evaluated on every check.
    outsider = await suite.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(user_id=leaves.id, segment_id=segment.id)
    )
    assert (outsider.is_member, outsider.cached) == (False, False)


async def test_a_refresh_that_ran_across_a_change_confirms_nothing(suite: Suite, tag: str) -> None:
    member, segment = await pro_member_and_segment(suite, tag)
    segment_id = uuid.UUID(segment.id)
    await suite.refresh(segment.id)
    # A refresh read the definition, then the definition changed before it finished.
    seen = await store.changed_at(suite.segments_pool, segment_id)
    assert seen is not None
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "plan", "op": "eq", "value": "x"})
    )
    late = suite.clock.now() + timedelta(days=1)
    await store.finish_refresh(suite.segments_pool, segment_id, late, late, seen)
    # Neither recorded as the last refresh, nor put off: the segment stays due, and
    # its cached members stale.
    got = await suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=segment.id))
    assert got.segment.evaluate_time.ToDatetime(tzinfo=UTC) < late
    assert segment_id in await store.due_segments(suite.segments_pool, suite.clock.now(), 1000)
    assert await membership_answer(suite, member.id, segment.id) == (False, False)


async def test_members_a_refresh_wrote_across_a_change_are_stale(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    member, segment = await pro_member_and_segment(suite, tag)
    segment_id = uuid.UUID(segment.id)
    # A refresh reads the definition; the definition changes (its moment taken
    # before the refresh takes its own); the refresh writes the member the old
    # definition found, then finishes.
    seen = await store.changed_at(suite.segments_pool, segment_id)
    assert seen is not None
    await suite.change_conditions(
        segment.id, tagged(tag, {"attr": "plan", "op": "eq", "value": "x"})
    )
    as_of = suite.clock.now() + timedelta(seconds=1)
    await segments_admin.execute("SET search_path = segments")
    entered = await store.upsert_members(
        segments_admin,
        [(uuid.UUID(member.id), segment_id)],
        [as_of + timedelta(hours=1)],
        as_of,
    )
    assert entered == [(uuid.UUID(member.id), segment_id)]
    await store.finish_refresh(segments_admin, segment_id, as_of, as_of, seen)
    # Written after the change's moment, under the old definition: not trusted.
    assert await membership_answer(suite, member.id, segment.id) == (False, False)


@asynccontextmanager
async def change_in_flight(
    conn: asyncpg.Connection, segment_id: uuid.UUID, conditions: dict[str, Any], moment: datetime
) -> AsyncIterator[None]:
    """An UpdateSegment in flight: its locks taken, the definition changed and the
    change's moment written, committed when the block ends."""
    await conn.execute("SET search_path = segments")
    async with conn.transaction():
        assert await store.lock_segments(conn, [segment_id], exclusive=True)
        await store.lock_definitions(conn, [segment_id], exclusive=True)
        await conn.execute(
            "UPDATE user_segments SET conditions = $2::jsonb WHERE id = $1",
            segment_id,
            json.dumps(conditions),
        )
        await store.mark_changed(conn, [segment_id], moment)
        yield


# Whether some session waits for a lock this connection holds.
BLOCKED_BY_ME = (
    "SELECT EXISTS (SELECT FROM pg_stat_activity"
    " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)))"
)


async def still_running(call: Awaitable[Any], change: asyncpg.Connection) -> asyncio.Future[Any]:
    """The call, started; it must be seen waiting in PostgreSQL for the locks of
    the change in flight on `change`."""
    running = asyncio.ensure_future(call)

    async def waiting_for_the_change() -> bool:
        # Had it read the definition without waiting, it would have written an
        # answer of the old one after the change's moment: as fresh.
        assert not running.done(), "the call did not wait for the change in flight"
        return bool(await change.fetchval(BLOCKED_BY_ME))

    await eventually(waiting_for_the_change)
    return running


async def test_a_reevaluation_waits_for_a_definition_change_in_flight_and_reads_it(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    member, segment = await pro_member_and_segment(suite, tag)
    await suite.refresh(segment.id)
    free = tagged(tag, {"attr": "plan", "op": "eq", "value": "free"})
    async with change_in_flight(segments_admin, uuid.UUID(segment.id), free, suite.clock.now()):
        reevaluation = await still_running(
            suite.segments.ReevaluateUsers(
                segments_pb2.ReevaluateUsersRequest(user_ids=[member.id])
            ),
            segments_admin,
        )
    assert (await reevaluation).exited_count == 1
    assert await membership_answer(suite, member.id, segment.id) == (False, False)


async def test_a_check_waits_for_a_definition_change_in_flight_and_reads_it(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    user, segment = await pro_member_and_segment(suite, tag)
    # Not cached: the check evaluates the user.
    await segments_admin.execute(
        "DELETE FROM segments.user_segment_memberships WHERE segment_id = $1",
        uuid.UUID(segment.id),
    )
    free = tagged(tag, {"attr": "plan", "op": "eq", "value": "free"})
    request = segments_pb2.CheckMembershipRequest(user_id=user.id, segment_id=segment.id)
    async with change_in_flight(segments_admin, uuid.UUID(segment.id), free, suite.clock.now()):
        check = await still_running(suite.segments.CheckMembership(request), segments_admin)
    assert (await check).is_member is False
    assert not await suite.members(segment.id)


async def test_a_change_waits_for_an_answer_being_read_from_its_definition(
    suite: Suite, segments_admin: asyncpg.Connection, tag: str
) -> None:
    _, segment = await pro_member_and_segment(suite, tag)
    segment_id = uuid.UUID(segment.id)
    await segments_admin.execute("SET search_path = segments")
    change = tagged(tag, {"attr": "plan", "op": "eq", "value": "free"})
    delete = segments_pb2.DeleteSegmentRequest(segment_id=segment.id)
    for call in (
        lambda: suite.change_conditions(segment.id, change),
        lambda: suite.segments.DeleteSegment(delete),
    ):
        async with segments_admin.transaction():
            # What a re-evaluation or a check holds while it reads and writes.
            await store.lock_definitions(segments_admin, [segment_id])
            running = await still_running(call(), segments_admin)
        await running
    error = await rpc_error(
        suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=segment.id))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_change_whose_moment_precedes_the_last_refresh_makes_its_members_stale(
    suite: Suite, tag: str
) -> None:
    member, segment = await pro_member_and_segment(suite, tag)
    segment_id = uuid.UUID(segment.id)
    # The change takes its moment, a refresh runs from start to end with the old
    # definition, then the change writes its moment.
    moment = suite.clock.now()
    await suite.refresh(segment.id)
    await store.mark_changed(suite.segments_pool, [segment_id], moment)
    assert await membership_answer(suite, member.id, segment.id) == (True, False)


async def test_members_and_user_segments_are_listed(suite: Suite, tag: str) -> None:
    users = [await suite.create_user({"run": tag}) for _ in range(5)]
    await suite.settle()
    everyone = await suite.create_segment(tagged(tag))
    nobody = await suite.create_segment(tagged(tag, {"attr": "x", "op": "exists"}))
    await suite.refresh(everyone.id)
    await suite.refresh(nobody.id)
    seen, token = [], ""
    while True:
        page = await suite.segments.ListSegmentMembers(
            segments_pb2.ListSegmentMembersRequest(
                segment_id=everyone.id, page_size=2, page_token=token
            )
        )
        assert len(page.memberships) <= 2
        seen += [m.user_id for m in page.memberships]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(u.id for u in users)
    mine = await suite.segments.ListUserSegments(
        segments_pb2.ListUserSegmentsRequest(user_id=users[0].id)
    )
    assert [m.segment_id for m in mine.memberships] == [everyone.id]
    assert mine.memberships[0].HasField("valid_until")


async def test_explain_shows_why_a_user_is_or_is_not_a_member(suite: Suite, tag: str) -> None:
    user = await suite.create_user(
        {"run": tag, "plan": "free", "email": "bo@EXAMPLE.com", "seats": 3}, stage=ACTIVATION
    )
    segment = await suite.create_segment(
        tagged(
            tag,
            {"attr": "plan", "op": "in", "value": ["pro", "team"]},
            {"not": {"attr": "email", "op": "ends_with", "value": "@example.com", "ci": True}},
            {"any": [{"attr": "seats", "op": "gt", "value": 2}, {"attr": "vip", "op": "exists"}]},
        ),
        (REVENUE,),
    )
    explained = await suite.segments.ExplainMembership(
        segments_pb2.ExplainMembershipRequest(user_id=user.id, segment_id=segment.id)
    )
    assert not explained.is_member and not explained.stage_matched
    assert [(leaf.path, leaf.held) for leaf in explained.leaves] == [
        ("all[0]", True),
        ("all[1]", False),
        ("all[2].not", True),
        ("all[3].any[0]", True),
        ("all[3].any[1]", False),
    ]
    leaves = explained.leaves
    assert struct_to_dict(leaves[1].condition) == {
        "attr": "plan",
        "op": "in",
        "value": ["pro", "team"],
    }
    assert leaves[1].actual_value.string_value == "free"
    assert leaves[3].actual_value.number_value == 3
    assert not explained.leaves[4].HasField("actual_value")


async def test_segments_reference_segments_without_cycles(suite: Suite, tag: str) -> None:
    paying = await suite.create_user({"run": tag, "plan": "pro"}, stage=REVENUE)
    trial = await suite.create_user({"run": tag, "plan": "pro"})
    await suite.settle()
    base = await suite.create_segment(
        tagged(tag, {"attr": "plan", "op": "eq", "value": "pro"}), (REVENUE,)
    )
    derived = await suite.create_segment({"v": 1, "all": [{"in_segment": base.id}]})
    result = await suite.refresh(derived.id)
    assert result.member_count == 1
    assert await suite.members(derived.id) == {paying.id}
    explained = await suite.segments.ExplainMembership(
        segments_pb2.ExplainMembershipRequest(user_id=trial.id, segment_id=derived.id)
    )
    assert [leaf.path for leaf in explained.leaves] == [
        "all[0]",
        "all[0].in_segment.all[0]",
        "all[0].in_segment.all[1]",
    ]
    assert not explained.is_member
    cycle = await rpc_error(
        suite.segments.UpdateSegment(
            segments_pb2.UpdateSegmentRequest(
                segment=segments_pb2.Segment(
                    id=base.id,
                    conditions=dict_to_struct({"v": 1, "any": [{"in_segment": derived.id}]}),
                )
            )
        )
    )
    assert cycle.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(cycle) == ["segment.conditions.any[0]"]
    itself = await rpc_error(
        suite.segments.UpdateSegment(
            segments_pb2.UpdateSegmentRequest(
                segment=segments_pb2.Segment(
                    id=base.id, conditions=dict_to_struct({"v": 1, "in_segment": base.id})
                )
            )
        )
    )
    assert itself.code() == grpc.StatusCode.INVALID_ARGUMENT
    referenced = await rpc_error(
        suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=base.id))
    )
    assert referenced.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(referenced).metadata["referenced_by"] == derived.id
    # Widening the base widens the derived segment at its next refresh.
    await suite.segments.UpdateSegment(
        segments_pb2.UpdateSegmentRequest(
            segment=segments_pb2.Segment(id=base.id),
            update_mask=field_mask_pb2.FieldMask(paths=["lifecycle_stages"]),
        )
    )
    assert (await suite.refresh(derived.id)).member_count == 2
    await suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=derived.id))
    await suite.segments.DeleteSegment(segments_pb2.DeleteSegmentRequest(segment_id=base.id))
    error = await rpc_error(
        suite.segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=base.id))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
