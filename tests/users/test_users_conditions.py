"""What the users service does for segments, over real gRPC and PostgreSQL:
MatchUserIds, CountUsers and BatchGetUserProfiles, their bad input, the
statement timeout, and the ReevaluateUsers messages every change of a user
leaves in its outbox for the segments service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct, set_timestamp
from services.users.handlers import REEVALUATE_USERS, UserMatcher
from tests.support import (
    ScratchDatabase,
    error_info,
    free_port,
    rpc_error,
    running,
    service_env,
    valid_until_of,
)
from tests.support import violated_fields as fields_of

pytestmark = pytest.mark.users

if TYPE_CHECKING:
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub as Stub

ACTIVATION = stage_pb2.LIFECYCLE_STAGE_ACTIVATION
REVENUE = stage_pb2.LIFECYCLE_STAGE_REVENUE


async def create(users: Stub, attributes: dict[str, Any], stage: int = 0) -> users_pb2.User:
    user = users_pb2.User(
        email=f"cond-{uuid.uuid4().hex[:12]}@example.com",
        attributes=dict_to_struct(attributes),
        lifecycle_stage=stage,  # type: ignore[arg-type]
    )
    return (await users.CreateUser(users_pb2.CreateUserRequest(user=user))).user


def match_request(condition: dict[str, Any], **fields: Any) -> users_pb2.MatchUserIdsRequest:
    return users_pb2.MatchUserIdsRequest(condition=dict_to_struct(condition), **fields)


async def matched(users: Stub, request: users_pb2.MatchUserIdsRequest) -> dict[str, Any]:
    found = {}
    async for response in users.MatchUserIds(request):
        for user_id, micros in zip(response.user_ids, response.valid_until_micros, strict=True):
            found[user_id] = valid_until_of(micros)
    return found


async def test_match_users_restricts_by_condition_stage_and_ids(users: Stub) -> None:
    tag = uuid.uuid4().hex
    pro = await create(users, {"run": tag, "plan": "pro", "seats": 5})
    pro_revenue = await create(users, {"run": tag, "plan": "pro", "seats": 2}, REVENUE)
    await create(users, {"run": tag, "plan": "free"})
    condition: dict[str, Any] = {"v": 1, "all": [{"attr": "run", "op": "eq", "value": tag}]}
    plan_pro = {"v": 1, "all": [*condition["all"], {"attr": "plan", "op": "eq", "value": "pro"}]}
    assert set(await matched(users, match_request(plan_pro))) == {pro.id, pro_revenue.id}
    in_revenue = match_request(plan_pro, lifecycle_stages=[REVENUE])
    assert set(await matched(users, in_revenue)) == {pro_revenue.id}
    only = match_request(condition, user_ids=[pro.id, str(uuid.uuid4())])
    assert set(await matched(users, only)) == {pro.id}
    assert len(await matched(users, match_request(condition, limit=2))) == 2
    count = await users.CountUsers(users_pb2.CountUsersRequest(condition=dict_to_struct(plan_pro)))
    assert count.count == 2
    seats = {"v": 1, "all": [*condition["all"], {"attr": "seats", "op": "gte", "value": 3}]}
    assert set(await matched(users, match_request(seats))) == {pro.id}


async def test_match_users_streams_large_results_in_batches_in_id_order(users: Stub) -> None:
    tag = uuid.uuid4().hex
    rows = [users_pb2.UserImport(email=f"bulk-{tag}-{n}@example.com") for n in range(6000)]
    rows = [
        users_pb2.UserImport(email=row.email, attributes=dict_to_struct({"bulk": tag}))
        for row in rows
    ]

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(users=rows)

    assert (await users.ImportUsers(stream())).created_count == 6000
    batches = [
        list(response.user_ids)
        async for response in users.MatchUserIds(
            match_request({"v": 1, "attr": "bulk", "op": "eq", "value": tag})
        )
    ]
    assert [len(batch) for batch in batches] == [5000, 1000]
    # In ascending id order over the stream, as UUIDs compare: a refresh diffs
    # each batch with the cached members of its range.
    ids = [uuid.UUID(user_id) for batch in batches for user_id in batch]
    assert ids == sorted(set(ids))


async def test_valid_until_is_when_a_window_closes_as_of_the_given_moment(users: Stub) -> None:
    tag = uuid.uuid4().hex
    signed = datetime(2025, 5, 25, tzinfo=UTC)
    user = await create(users, {"run": tag, "signup_at": "2025-05-25T00:00:00Z"})
    condition = {
        "v": 1,
        "all": [
            {"attr": "run", "op": "eq", "value": tag},
            {"attr": "signup_at", "op": "within_last", "value": "P14D"},
        ],
    }
    request = match_request(condition)
    set_timestamp(request.as_of, datetime(2025, 6, 1, tzinfo=UTC))
    assert await matched(users, request) == {user.id: signed + timedelta(days=14, microseconds=1)}
    set_timestamp(request.as_of, signed + timedelta(days=14, microseconds=1))
    assert await matched(users, request) == {}


async def next_entry(users: Stub, request: users_pb2.MatchUserIdsRequest) -> datetime | None:
    """The earliest next_entry_time over the stream's messages."""
    moments = [
        response.next_entry_time.ToDatetime(tzinfo=UTC)
        async for response in users.MatchUserIds(request)
        if response.HasField("next_entry_time")
    ]
    return min(moments, default=None)


async def test_match_users_tells_when_the_next_user_enters_by_time_alone(users: Stub) -> None:
    tag = uuid.uuid4().hex
    as_of = datetime(2025, 6, 1, tzinfo=UTC)
    seen = {"soon": "2025-06-03T00:00:00Z", "later": "2025-06-05T00:00:00Z"}
    await create(users, {"run": tag, "plan": "pro", "seen": seen["soon"], "paid": seen["later"]})
    await create(users, {"run": tag, "plan": "pro", "seen": seen["later"]})
    # A user who fails a leaf time never changes never enters, however soon their moment.
    await create(users, {"run": tag, "plan": "free", "seen": "2025-06-02T00:00:00Z"})
    await create(users, {"run": tag, "plan": "pro", "seen": "2025-05-31T12:00:00Z"})

    def leaves(*more: dict[str, Any]) -> dict[str, Any]:
        run = {"attr": "run", "op": "eq", "value": tag}
        return {"v": 1, "all": [run, {"attr": "plan", "op": "eq", "value": "pro"}, *more]}

    def window(path: str, op: str = "within_last", value: str = "P7D") -> dict[str, Any]:
        return {"attr": path, "op": op, "value": value}

    cases = [
        # A moment in the future enters the window when it comes.
        (leaves(window("seen")), datetime(2025, 6, 3, tzinfo=UTC)),
        # A moment in the window leaves it a day and a microsecond later.
        (
            leaves(window("seen", "not_within_last", "P1D")),
            datetime(2025, 6, 1, 12, 0, 0, 1, tzinfo=UTC),
        ),
        # `all` waits for the later of the moments it needs: "paid" comes after "seen".
        (leaves(window("seen"), window("paid")), datetime(2025, 6, 5, tzinfo=UTC)),
        # `any` takes the first.
        (leaves({"any": [window("paid"), window("seen")]}), datetime(2025, 6, 3, tzinfo=UTC)),
        # Nothing read changes with time.
        (leaves(), None),
    ]
    for condition, expected in cases:
        request = match_request(condition, include_next_entry=True)
        set_timestamp(request.as_of, as_of)
        assert await next_entry(users, request) == expected, condition
    request = match_request(leaves(window("seen")))
    set_timestamp(request.as_of, as_of)
    assert await next_entry(users, request) is None


async def test_a_match_with_next_entry_streams_those_who_may_match_in_batches(
    users: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 3: most users are dropped before the sort (their moment has
    # passed the window for good, or they have none); the batches of those kept
    # hold the matches in id order, and the users who may enter give the next
    # entry, whichever batch they are in.
    monkeypatch.setattr(UserMatcher, "BATCH_SIZE", 3)
    tag = uuid.uuid4().hex
    as_of = datetime(2025, 6, 1, tzinfo=UTC)
    days = {"in": [-1, -2, -3, -4, -5], "ahead": [9, 3, 12], "gone": [-30, -40, -50, -60]}
    found: dict[str, list[str]] = {kind: [] for kind in days}
    for kind, offsets in days.items():
        for offset in offsets:
            seen = (as_of + timedelta(days=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")
            found[kind].append((await create(users, {"run": tag, "seen": seen})).id)
    for _ in range(4):
        await create(users, {"run": tag})
    condition = {
        "v": 1,
        "all": [
            {"attr": "run", "op": "eq", "value": tag},
            {"attr": "seen", "op": "within_last", "value": "P7D"},
        ],
    }
    request = match_request(condition, include_next_entry=True)
    set_timestamp(request.as_of, as_of)
    ids = [
        user_id async for response in users.MatchUserIds(request) for user_id in response.user_ids
    ]
    assert ids == sorted(found["in"], key=uuid.UUID)
    assert await next_entry(users, request) == as_of + timedelta(days=3)


async def test_the_next_entry_of_a_time_in_stage_is_when_its_threshold_passes(
    users: Stub,
) -> None:
    tag = uuid.uuid4().hex
    user = await create(users, {"run": tag})
    entered = user.create_time.ToDatetime(tzinfo=UTC)
    condition = {
        "v": 1,
        "all": [
            {"attr": "run", "op": "eq", "value": tag},
            {"stage_age": {"op": "gt", "value": "PT12H"}},
        ],
    }
    request = match_request(condition, include_next_entry=True, user_ids=[user.id])
    set_timestamp(request.as_of, entered + timedelta(hours=1))
    assert await matched(users, request) == {}
    assert await next_entry(users, request) == entered + timedelta(hours=12, microseconds=1)


async def test_profiles_carry_what_conditions_read(users: Stub) -> None:
    user = await create(users, {"plan": "pro", "big": 2**60, "ratio": 0.1})
    await users.TransitionStage(
        users_pb2.TransitionStageRequest(user_id=user.id, to_stage=ACTIVATION)
    )
    moved = await users.GetLifecycleHistory(users_pb2.GetLifecycleHistoryRequest(user_id=user.id))
    entered = moved.transitions[0].transition_time
    await users.TransitionStage(
        users_pb2.TransitionStageRequest(
            user_id=user.id, to_stage=ACTIVATION, allow_same_stage=True
        )
    )
    response = await users.BatchGetUserProfiles(
        users_pb2.BatchGetUserProfilesRequest(user_ids=[user.id, str(uuid.uuid4())])
    )
    [profile] = response.profiles
    assert profile.user_id == user.id
    assert profile.lifecycle_stage == ACTIVATION
    # Stored as the decimal of the double the request carried; the profile gives it exactly.
    assert profile.attributes_json == '{"big": 1152921504606847000, "plan": "pro", "ratio": 0.1}'
    assert profile.create_time == user.create_time
    # A transition to the same stage does not restart the time in stage.
    assert profile.stage_enter_time == entered


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "condition"),
        ({"condition": {"all": []}}, "condition.v"),
        ({"condition": {"v": 1, "any": [{"attr": "a", "op": "nope"}]}}, "condition.any[0].op"),
        ({"condition": {"v": 1, "in_segment": str(uuid.uuid4())}}, "condition.in_segment"),
        ({"condition": {"v": 1, "attr": "a", "src": "event", "op": "exists"}}, "condition.src"),
        ({"condition": {"v": 1, "all": []}, "limit": -1}, "limit"),
        ({"condition": {"v": 1, "all": []}, "limit": 2, "include_next_entry": True}, "limit"),
        ({"condition": {"v": 1, "all": []}, "user_ids": ["nope"]}, "user_ids[0]"),
        ({"condition": {"v": 1, "all": []}, "user_ids": [str(uuid.uuid4())] * 10_001}, "user_ids"),
        ({"condition": {"v": 1, "all": []}, "lifecycle_stages": [17]}, "lifecycle_stages[0]"),
    ],
)
async def test_match_users_refuses_bad_requests(
    users: Stub, request_fields: dict[str, Any], field: str
) -> None:
    if "condition" in request_fields:
        request_fields = {
            **request_fields,
            "condition": dict_to_struct(request_fields["condition"]),
        }
    request = users_pb2.MatchUserIdsRequest(**request_fields)
    error = await rpc_error(matched(users, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in fields_of(error)


async def test_count_and_profiles_refuse_bad_requests(users: Stub) -> None:
    error = await rpc_error(
        users.CountUsers(
            users_pb2.CountUsersRequest(condition=dict_to_struct({"v": 1, "attr": "1"}))
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "condition.attr" in fields_of(error)
    for ids, field in (([str(uuid.uuid4())] * 1001, "user_ids"), (["x"], "user_ids[0]")):
        error = await rpc_error(
            users.BatchGetUserProfiles(users_pb2.BatchGetUserProfilesRequest(user_ids=ids))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fields_of(error) == [field]


async def test_a_condition_that_runs_too_long_is_cancelled(
    database: ScratchDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_USERS_CONDITION_TIMEOUT_SECONDS", "0.001")
    # Planning thousands of containments takes far longer than a millisecond.
    slow = {
        "v": 1,
        "any": [
            {"attr": f"k{n}", "op": "in", "value": [f"v{i}" for i in range(1000)]}
            for n in range(20)
        ],
    }
    env = service_env(database, {"users": free_port()})
    async with running("users", env) as host, grpc.aio.insecure_channel(host.address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        error = await rpc_error(matched(stub, match_request(slow)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "CONDITION_TIMEOUT"
        count = stub.CountUsers(users_pb2.CountUsersRequest(condition=dict_to_struct(slow)))
        assert (await rpc_error(count)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def reevaluations(admin: asyncpg.Connection, user_id: str) -> list[segments_pb2.UserChange]:
    """The ReevaluateUsers changes about a user waiting in the users service's outbox."""
    changes = []
    for row in await admin.fetch(
        "SELECT payload FROM users.outbox WHERE topic = $1 ORDER BY id", REEVALUATE_USERS
    ):
        request = segments_pb2.ReevaluateUsersRequest.FromString(row["payload"])
        assert not request.user_ids, "the users service names what changed"
        changes += [c for c in request.changes if c.user_id == user_id]
    return changes


async def test_every_change_of_a_user_asks_the_segments_service_to_reevaluate(
    users: Stub, admin: asyncpg.Connection
) -> None:
    user = await create(users, {"plan": "free", "seats": 1})
    assert [c.created for c in await reevaluations(admin, user.id)] == [True]
    await users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, attributes=dict_to_struct({"plan": "pro", "x": None})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, attributes=dict_to_struct({"plan": "pro"})),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    await users.TransitionStage(users_pb2.TransitionStageRequest(user_id=user.id, to_stage=REVENUE))

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(
            users=[
                users_pb2.UserImport(
                    email=user.email,
                    lifecycle_stage=ACTIVATION,
                    attributes=dict_to_struct({"seats": 2}),
                )
            ]
        )

    await users.ImportUsers(stream())
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.id))
    changes = await reevaluations(admin, user.id)
    assert [(list(c.attribute_keys), c.stage_changed, c.created) for c in changes] == [
        ([], False, True),
        (["plan"], False, False),
        ([], True, False),
        (["seats"], True, False),
    ]
