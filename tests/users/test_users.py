"""The users service over real gRPC and PostgreSQL: every RPC, its bad input,
idempotency, concurrency, and the events it leaves in its outbox."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.users.v1 import users_pb2
from runtime.lifecycle_events import ERASE_TOPICS, RECORD_EVENTS, TRACK_EVENTS
from runtime.structs import struct_to_dict
from tests.support import error_info, rpc_error, violated_fields

pytestmark = pytest.mark.users

if TYPE_CHECKING:
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub as Stub
ACQUISITION = stage_pb2.LIFECYCLE_STAGE_ACQUISITION
ACTIVATION = stage_pb2.LIFECYCLE_STAGE_ACTIVATION
RETENTION = stage_pb2.LIFECYCLE_STAGE_RETENTION
REVENUE = stage_pb2.LIFECYCLE_STAGE_REVENUE
REFERRAL = stage_pb2.LIFECYCLE_STAGE_REFERRAL
ALL_STAGES = [ACQUISITION, ACTIVATION, RETENTION, REVENUE, REFERRAL]
# A number no stage has; typed Any so that it can be put where a stage goes.
NOT_A_STAGE: Any = 17


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(data)
    return value


async def create(users: Stub, email: str | None = None, **fields: Any) -> users_pb2.User:
    user = users_pb2.User(email=email or unique_email(), **fields)
    response = await users.CreateUser(users_pb2.CreateUserRequest(user=user))
    return response.user


async def outbox_events(
    admin: asyncpg.Connection, user_id: str
) -> list[metrics_pb2.LifecycleEvent]:
    """Lifecycle events about a user still waiting in the users service's outbox."""
    events = []
    for row in await admin.fetch(
        "SELECT payload FROM users.outbox WHERE topic = $1 ORDER BY id", RECORD_EVENTS
    ):
        request = metrics_pb2.RecordEventsRequest.FromString(row["payload"])
        events += [e for e in request.events if e.user_id == user_id]
    return events


# CreateUser


async def test_create_user_trims_email_defaults_stage_and_records_first_stage(
    users: Stub, admin: asyncpg.Connection
) -> None:
    email = unique_email("Create")
    response = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"  {email}\t", attributes=struct({"plan": "pro", "seats": 3})
            )
        )
    )
    user = response.user
    assert uuid.UUID(user.id)
    assert user.email == email
    assert user.lifecycle_stage == ACQUISITION
    assert dict(user.attributes) == {"plan": "pro", "seats": 3}
    assert user.create_time == user.update_time
    history = await users.GetLifecycleHistory(users_pb2.GetLifecycleHistoryRequest(user_id=user.id))
    assert [(t.from_stage, t.to_stage) for t in history.transitions] == [
        (stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED, ACQUISITION)
    ]
    events = await outbox_events(admin, user.id)
    assert [(e.event_type, e.lifecycle_stage, e.producer) for e in events] == [
        ("user.created", ACQUISITION, "users")
    ]
    stored = await admin.fetchval(
        "SELECT attributes FROM users.users WHERE id = $1", uuid.UUID(user.id)
    )
    assert stored == '{"plan": "pro", "seats": 3}'


async def test_create_user_with_initial_stage(users: Stub) -> None:
    user = await create(users, lifecycle_stage=REVENUE)
    assert user.lifecycle_stage == REVENUE


@pytest.mark.parametrize(
    ("user", "field"),
    [
        (users_pb2.User(email=""), "user.email"),
        (users_pb2.User(email="   "), "user.email"),
        (users_pb2.User(email="no-at-sign.example.com"), "user.email"),
        (users_pb2.User(email="two@@example.com"), "user.email"),
        (users_pb2.User(email="spa ce@example.com"), "user.email"),
        (users_pb2.User(email="a" * 250 + "@example.com"), "user.email"),
        (
            users_pb2.User(email="ok@example.com", lifecycle_stage=NOT_A_STAGE),
            "user.lifecycle_stage",
        ),
        (
            users_pb2.User(email="ok@example.com", attributes=struct({"blob": "x" * 70_000})),
            "user.attributes",
        ),
    ],
)
async def test_create_user_rejects_bad_input(users: Stub, user: users_pb2.User, field: str) -> None:
    error = await rpc_error(users.CreateUser(users_pb2.CreateUserRequest(user=user)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [field]
    assert field in (error.details() or "")


async def test_create_user_reports_every_bad_field_at_once(users: Stub) -> None:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email="bad", lifecycle_stage=NOT_A_STAGE),
        request_id="not-a-uuid",
    )
    error = await rpc_error(users.CreateUser(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violated_fields(error)) == ["request_id", "user.email", "user.lifecycle_stage"]
    assert error_info(error).domain == "lifecycle.users"


async def test_create_user_requires_a_user(users: Stub) -> None:
    error = await rpc_error(users.CreateUser(users_pb2.CreateUserRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["user"]


async def test_email_is_unique_case_insensitively(users: Stub) -> None:
    email = unique_email("Dup")
    await create(users, email)
    error = await rpc_error(create(users, email.upper()))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).reason == "EMAIL_TAKEN"


async def test_create_user_is_idempotent_on_request_id(
    users: Stub, admin: asyncpg.Connection
) -> None:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email=unique_email()), request_id=str(uuid.uuid4())
    )
    first, second = await asyncio.gather(users.CreateUser(request), users.CreateUser(request))
    assert first.user.id == second.user.id
    count = await admin.fetchval(
        "SELECT count(*) FROM users.users WHERE lower(email) = lower($1)", request.user.email
    )
    assert count == 1
    assert len(await outbox_events(admin, first.user.id)) == 1


async def test_request_id_reused_for_another_request_is_refused(users: Stub) -> None:
    request_id = str(uuid.uuid4())
    await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(email=unique_email()), request_id=request_id
        )
    )
    other = users_pb2.CreateUserRequest(
        user=users_pb2.User(email=unique_email()), request_id=request_id
    )
    error = await rpc_error(users.CreateUser(other))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["request_id"]


# GetUser


async def test_get_user_by_id_and_by_email(users: Stub) -> None:
    created = await create(users, unique_email("Mixed.Case"))
    by_id = await users.GetUser(users_pb2.GetUserRequest(user_id=created.id))
    by_email = await users.GetUser(users_pb2.GetUserRequest(email=f" {created.email.upper()} "))
    assert by_id.user == created
    assert by_email.user == created


@pytest.mark.parametrize(
    ("request_message", "code", "field"),
    [
        (users_pb2.GetUserRequest(), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (users_pb2.GetUserRequest(user_id="42"), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (users_pb2.GetUserRequest(email="  "), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (users_pb2.GetUserRequest(user_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, None),
        (
            users_pb2.GetUserRequest(email="nobody-here@example.com"),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ],
)
async def test_get_user_errors(
    users: Stub, request_message: users_pb2.GetUserRequest, code: grpc.StatusCode, field: str | None
) -> None:
    error = await rpc_error(users.GetUser(request_message))
    assert error.code() == code
    if field:
        assert violated_fields(error) == [field]
    else:
        assert error_info(error).reason == "USER_NOT_FOUND"


# UpdateUser


async def test_update_user_merges_attributes_as_a_json_merge_patch(
    users: Stub, admin: asyncpg.Connection
) -> None:
    user = await create(
        users,
        attributes=struct(
            {"plan": "free", "address": {"city": "Berlin", "zip": "10115"}, "old": 1}
        ),
    )
    patch = struct({"plan": "pro", "address": {"zip": None, "country": "DE"}, "old": None})
    response = await users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, attributes=patch),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
        )
    )
    updated = response.user
    assert struct_to_dict(updated.attributes) == {
        "plan": "pro",
        "address": {"city": "Berlin", "country": "DE"},
    }
    assert updated.update_time.ToDatetime() > user.update_time.ToDatetime()
    assert updated.etag != user.etag
    changed = [
        e for e in await outbox_events(admin, user.id) if e.event_type == "user.attributes_changed"
    ]
    assert len(changed) == 1
    assert struct_to_dict(changed[0].data)["changes"] == {
        "plan": {"from": "free", "to": "pro"},
        "address": {
            "from": {"city": "Berlin", "zip": "10115"},
            "to": {"city": "Berlin", "country": "DE"},
        },
        "old": {"from": 1, "to": None},
    }


async def test_update_user_email_and_full_replace(users: Stub) -> None:
    user = await create(users, attributes=struct({"a": 1, "b": 2}))
    new_email = unique_email("renamed")
    response = await users.UpdateUser(
        users_pb2.UpdateUserRequest(user=users_pb2.User(id=user.id, email=new_email))
    )
    assert response.user.email == new_email
    assert struct_to_dict(response.user.attributes) == {"a": 1, "b": 2}
    replaced = await users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, email=new_email, attributes=struct({"c": 3})),
            update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        )
    )
    assert struct_to_dict(replaced.user.attributes) == {"c": 3}


async def test_update_user_with_stale_etag_is_aborted(users: Stub) -> None:
    user = await create(users)
    await users.UpdateUser(
        users_pb2.UpdateUserRequest(user=users_pb2.User(id=user.id, attributes=struct({"x": 1})))
    )
    stale = users_pb2.User(id=user.id, attributes=struct({"x": 2}), etag=user.etag)
    error = await rpc_error(users.UpdateUser(users_pb2.UpdateUserRequest(user=stale)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_info(error).reason == "ETAG_MISMATCH"


async def test_update_user_errors(users: Stub) -> None:
    user = await create(users)
    taken = await create(users)

    def update(mask: list[str] | None = None, **fields: Any) -> users_pb2.UpdateUserRequest:
        request = users_pb2.UpdateUserRequest(user=users_pb2.User(**fields))
        if mask is not None:
            request.update_mask.paths.extend(mask)
        return request

    cases = [
        (update(["attributes"], id="nope"), grpc.StatusCode.INVALID_ARGUMENT, ["user.id"]),
        (
            update(["lifecycle_stage"], id=user.id, lifecycle_stage=REVENUE),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["update_mask"],
        ),
        (update(["create_time"], id=user.id), grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"]),
        (update([], id=user.id), grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"]),
        (
            update(["email"], id=user.id, email="broken"),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["user.email"],
        ),
        (
            update(["attributes"], id=user.id, attributes=struct({"k": "v" * 70_000})),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["user.attributes"],
        ),
        (update(["attributes"], id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, []),
        (
            update(["email"], id=user.id, email=taken.email.upper()),
            grpc.StatusCode.ALREADY_EXISTS,
            [],
        ),
    ]
    for request, code, fields in cases:
        error = await rpc_error(users.UpdateUser(request))
        assert error.code() == code, request
        assert violated_fields(error) == fields, request
    error = await rpc_error(users.UpdateUser(update(["lifecycle_stage"], id=user.id)))
    assert "TransitionStage" in (error.details() or "")


async def test_merged_attributes_over_the_limit_are_refused_and_nothing_changes(
    users: Stub,
) -> None:
    user = await create(users, attributes=struct({"a": "x" * 40_000}))
    error = await rpc_error(
        users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id=user.id, attributes=struct({"b": "y" * 40_000}))
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["user.attributes"]
    after = await users.GetUser(users_pb2.GetUserRequest(user_id=user.id))
    assert after.user == user


# DeleteUser


async def test_delete_user_erases_user_and_history_and_asks_every_service_to_erase(
    users: Stub, admin: asyncpg.Connection
) -> None:
    user = await create(users)
    await users.TransitionStage(
        users_pb2.TransitionStageRequest(user_id=user.id, to_stage=ACTIVATION)
    )
    await users.DeleteUser(
        users_pb2.DeleteUserRequest(
            user_id=user.id,
            etag=(await users.GetUser(users_pb2.GetUserRequest(user_id=user.id))).user.etag,
        )
    )
    error = await rpc_error(users.GetUser(users_pb2.GetUserRequest(user_id=user.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    uid = uuid.UUID(user.id)
    assert (
        await admin.fetchval(
            "SELECT count(*) FROM users.user_lifecycle_history WHERE user_id = $1", uid
        )
        == 0
    )
    rows = await admin.fetch(
        "SELECT topic, payload FROM users.outbox WHERE topic = ANY($1)", list(ERASE_TOPICS.values())
    )
    asked = {
        row["topic"]
        for row in rows
        if metrics_pb2.EraseUserDataRequest.FromString(row["payload"]).user_id == user.id
    }
    assert asked == set(ERASE_TOPICS.values())
    erased = []
    for row in await admin.fetch(
        "SELECT payload FROM users.outbox WHERE topic = $1", RECORD_EVENTS
    ):
        erased += [
            e
            for e in metrics_pb2.RecordEventsRequest.FromString(row["payload"]).events
            if e.event_type == "user.erased"
        ]
    assert any(e.lifecycle_stage == ACTIVATION and e.user_id == "" for e in erased)


async def test_delete_user_errors_and_allow_missing(users: Stub) -> None:
    missing = str(uuid.uuid4())
    error = await rpc_error(users.DeleteUser(users_pb2.DeleteUserRequest(user_id=missing)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=missing, allow_missing=True))
    error = await rpc_error(users.DeleteUser(users_pb2.DeleteUserRequest(user_id="x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["user_id"]
    user = await create(users)
    error = await rpc_error(
        users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.id, etag="stale"))
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert (await users.GetUser(users_pb2.GetUserRequest(user_id=user.id))).user == user


# TransitionStage and history


async def test_transition_stage_records_history_and_event(
    users: Stub, admin: asyncpg.Connection
) -> None:
    user = await create(users)
    execution_id = str(uuid.uuid4())
    response = await users.TransitionStage(
        users_pb2.TransitionStageRequest(
            user_id=user.id,
            to_stage=ACTIVATION,
            workflow_execution_id=execution_id,
            metadata=struct({"why": "first login", "actors": ["mallory"]}),
        )
    )
    assert response.user.lifecycle_stage == ACTIVATION
    assert response.user.update_time.ToDatetime() > user.update_time.ToDatetime()
    transition = response.transition
    assert (transition.from_stage, transition.to_stage) == (ACQUISITION, ACTIVATION)
    assert transition.workflow_execution_id == execution_id
    # Who moved the user, as the service saw the call (authentication is off):
    # not whom the caller names.
    assert struct_to_dict(transition.metadata) == {"why": "first login", "actors": ["anonymous"]}
    events = [
        e for e in await outbox_events(admin, user.id) if e.event_type == "user.stage_changed"
    ]
    assert len(events) == 1
    assert events[0].workflow_execution_id == execution_id
    assert list(events[0].actors) == ["anonymous"]
    assert struct_to_dict(events[0].data)["from_stage"] == "Acquisition"
    # The same change goes to the triggers service as a user event, under the same id.
    tracked = []
    for row in await admin.fetch("SELECT payload FROM users.outbox WHERE topic = $1", TRACK_EVENTS):
        request = triggers_pb2.TrackEventsRequest.FromString(row["payload"])
        tracked += [e for e in request.events if e.user_id == user.id]
    assert [(e.event_type, e.message_id) for e in tracked] == [
        ("user.stage_changed", events[0].event_id)
    ]
    assert struct_to_dict(tracked[0].data) == struct_to_dict(events[0].data)


async def test_transition_to_the_current_stage(users: Stub) -> None:
    user = await create(users)
    error = await rpc_error(
        users.TransitionStage(
            users_pb2.TransitionStageRequest(user_id=user.id, to_stage=ACQUISITION)
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "SAME_STAGE"
    allowed = await users.TransitionStage(
        users_pb2.TransitionStageRequest(
            user_id=user.id, to_stage=ACQUISITION, allow_same_stage=True
        )
    )
    assert (allowed.transition.from_stage, allowed.transition.to_stage) == (
        ACQUISITION,
        ACQUISITION,
    )


async def test_transition_errors(users: Stub) -> None:
    user = await create(users)
    cases = [
        (
            users_pb2.TransitionStageRequest(user_id="bad", to_stage=ACTIVATION),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["user_id"],
        ),
        (
            users_pb2.TransitionStageRequest(user_id=user.id),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["to_stage"],
        ),
        (
            users_pb2.TransitionStageRequest(user_id=user.id, to_stage=NOT_A_STAGE),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["to_stage"],
        ),
        (
            users_pb2.TransitionStageRequest(
                user_id=user.id, to_stage=ACTIVATION, workflow_execution_id="e1"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["workflow_execution_id"],
        ),
        (
            users_pb2.TransitionStageRequest(user_id=str(uuid.uuid4()), to_stage=ACTIVATION),
            grpc.StatusCode.NOT_FOUND,
            [],
        ),
    ]
    for request, code, fields in cases:
        error = await rpc_error(users.TransitionStage(request))
        assert error.code() == code, request
        assert violated_fields(error) == fields, request


async def test_transition_is_idempotent_on_request_id(users: Stub) -> None:
    user = await create(users)
    request = users_pb2.TransitionStageRequest(
        user_id=user.id, to_stage=RETENTION, request_id=str(uuid.uuid4())
    )
    first = await users.TransitionStage(request)
    second = await users.TransitionStage(request)
    assert first.transition == second.transition
    history = await users.GetLifecycleHistory(users_pb2.GetLifecycleHistoryRequest(user_id=user.id))
    assert len(history.transitions) == 2


async def test_fifty_parallel_transitions_leave_a_consistent_history(users: Stub) -> None:
    user = await create(users)
    targets = [random.choice(ALL_STAGES) for _ in range(50)]
    await asyncio.gather(
        *(
            users.TransitionStage(
                users_pb2.TransitionStageRequest(user_id=user.id, to_stage=s, allow_same_stage=True)
            )
            for s in targets
        )
    )
    transitions: list[users_pb2.StageTransition] = []
    request = users_pb2.GetLifecycleHistoryRequest(user_id=user.id, page_size=7)
    while True:
        page = await users.GetLifecycleHistory(request)
        transitions += page.transitions
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    chronological = list(reversed(transitions))
    assert len(chronological) == 51
    assert sorted(t.to_stage for t in chronological[1:]) == sorted(targets)
    for before, after in itertools.pairwise(chronological):
        assert after.from_stage == before.to_stage
        assert after.transition_time.ToDatetime() >= before.transition_time.ToDatetime()
    final = await users.GetUser(users_pb2.GetUserRequest(user_id=user.id))
    assert final.user.lifecycle_stage == chronological[-1].to_stage


async def test_history_pagination_and_token_errors(users: Stub) -> None:
    user = await create(users)
    for stage in (ACTIVATION, RETENTION, REVENUE):
        await users.TransitionStage(
            users_pb2.TransitionStageRequest(user_id=user.id, to_stage=stage)
        )
    first = await users.GetLifecycleHistory(
        users_pb2.GetLifecycleHistoryRequest(user_id=user.id, page_size=3)
    )
    assert [t.to_stage for t in first.transitions] == [REVENUE, RETENTION, ACTIVATION]
    second = await users.GetLifecycleHistory(
        users_pb2.GetLifecycleHistoryRequest(
            user_id=user.id, page_size=3, page_token=first.next_page_token
        )
    )
    assert [t.to_stage for t in second.transitions] == [ACQUISITION]
    assert second.next_page_token == ""
    other = await create(users)
    for request in (
        users_pb2.GetLifecycleHistoryRequest(user_id=other.id, page_token=first.next_page_token),
        users_pb2.GetLifecycleHistoryRequest(user_id=user.id, page_token="garbage"),
        users_pb2.GetLifecycleHistoryRequest(
            user_id=user.id, page_token=first.next_page_token[:-2] + "AA"
        ),
    ):
        error = await rpc_error(users.GetLifecycleHistory(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["page_token"]
    error = await rpc_error(
        users.GetLifecycleHistory(
            users_pb2.GetLifecycleHistoryRequest(user_id=user.id, page_size=-1)
        )
    )
    assert violated_fields(error) == ["page_size"]
    error = await rpc_error(
        users.GetLifecycleHistory(users_pb2.GetLifecycleHistoryRequest(user_id=str(uuid.uuid4())))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


# ListUsers


async def test_list_users_filters_and_pages_in_a_stable_order(users: Stub) -> None:
    start = timestamp_pb2.Timestamp()
    start.GetCurrentTime()
    created = [await create(users, lifecycle_stage=REFERRAL) for _ in range(5)]
    created += [await create(users, lifecycle_stage=REVENUE) for _ in range(2)]
    request = users_pb2.ListUsersRequest(
        page_size=2, lifecycle_stages=[REFERRAL], created_after=start
    )
    seen: list[users_pb2.User] = []
    while True:
        page = await users.ListUsers(request)
        assert len(page.users) <= 2
        seen += page.users
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [u.id for u in seen] == [u.id for u in created[:5]]
    both = await users.ListUsers(
        users_pb2.ListUsersRequest(
            lifecycle_stages=[REVENUE, REFERRAL],
            created_after=start,
            created_before=created[-1].create_time,
        )
    )
    assert [u.id for u in both.users] == [u.id for u in created[:6]]


async def test_list_users_token_is_bound_to_its_filters(users: Stub) -> None:
    for _ in range(3):
        await create(users)
    first = await users.ListUsers(users_pb2.ListUsersRequest(page_size=1))
    changed = users_pb2.ListUsersRequest(
        page_size=1, page_token=first.next_page_token, lifecycle_stages=[REVENUE]
    )
    error = await rpc_error(users.ListUsers(changed))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]
    error = await rpc_error(
        users.ListUsers(users_pb2.ListUsersRequest(lifecycle_stages=[NOT_A_STAGE]))
    )
    assert violated_fields(error) == ["lifecycle_stages[0]"]
    big = await users.ListUsers(users_pb2.ListUsersRequest(page_size=5000))
    assert len(big.users) <= 1000


# ImportUsers


async def test_import_users_upserts_by_email_and_reports_bad_rows(
    users: Stub, admin: asyncpg.Connection
) -> None:
    existing = await create(users, attributes=struct({"plan": "free", "keep": True}))
    same = await create(users, attributes=struct({"plan": "free"}))
    new_emails = [unique_email("import") for _ in range(3)]

    async def batches() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(
            users=[
                users_pb2.UserImport(
                    email=new_emails[0], attributes=struct({"plan": "pro", "gone": None})
                ),
                users_pb2.UserImport(email="not an email"),
                users_pb2.UserImport(
                    email=existing.email.upper(),
                    lifecycle_stage=REVENUE,
                    attributes=struct({"plan": "pro"}),
                ),
            ]
        )
        yield users_pb2.ImportUsersRequest(
            users=[
                users_pb2.UserImport(email=new_emails[1], lifecycle_stage=ACTIVATION),
                users_pb2.UserImport(email=same.email, attributes=struct({"plan": "free"})),
                users_pb2.UserImport(email=new_emails[2], lifecycle_stage=NOT_A_STAGE),
                users_pb2.UserImport(email=new_emails[1].upper()),
                users_pb2.UserImport(
                    email=unique_email(), attributes=struct({"big": "z" * 70_000})
                ),
            ]
        )

    result = await users.ImportUsers(batches())
    assert (
        result.created_count,
        result.updated_count,
        result.unchanged_count,
        result.failed_count,
    ) == (2, 1, 1, 4)
    assert [(e.index, e.field) for e in result.errors] == [
        (1, "email"),
        (5, "lifecycle_stage"),
        (6, "email"),
        (7, "attributes"),
    ]
    updated = (await users.GetUser(users_pb2.GetUserRequest(user_id=existing.id))).user
    assert updated.lifecycle_stage == REVENUE
    assert struct_to_dict(updated.attributes) == {"plan": "pro", "keep": True}
    fresh = (await users.GetUser(users_pb2.GetUserRequest(email=new_emails[0]))).user
    assert struct_to_dict(fresh.attributes) == {"plan": "pro"}
    assert fresh.lifecycle_stage == ACQUISITION
    activated = (await users.GetUser(users_pb2.GetUserRequest(email=new_emails[1]))).user
    assert activated.lifecycle_stage == ACTIVATION
    history = await users.GetLifecycleHistory(
        users_pb2.GetLifecycleHistoryRequest(user_id=existing.id)
    )
    latest = history.transitions[0]
    assert (latest.from_stage, latest.to_stage) == (ACQUISITION, REVENUE)
    assert [e.event_type for e in await outbox_events(admin, existing.id)][-2:] == [
        "user.stage_changed",
        "user.attributes_changed",
    ]
    assert [e.event_type for e in await outbox_events(admin, fresh.id)] == ["user.created"]
    assert await outbox_events(admin, same.id) == [
        e for e in await outbox_events(admin, same.id) if e.event_type == "user.created"
    ]


async def test_import_applies_a_users_rows_in_stream_order_across_parallel_lanes(
    users: Stub, admin: asyncpg.Connection
) -> None:
    """Chunks are written on several transactions at once; the rows naming one
    user (in any letter case) still apply in the order of the stream."""
    crowd = [unique_email("lanes") for _ in range(1000)]
    repeated = unique_email("repeated")
    spellings = [repeated, repeated.upper(), repeated.capitalize()] * 3

    async def batches() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        for step, spelling in enumerate(spellings):
            yield users_pb2.ImportUsersRequest(
                users=[
                    users_pb2.UserImport(email=spelling, attributes=struct({"step": step})),
                    *(
                        users_pb2.UserImport(email=email, attributes=struct({"step": step}))
                        for email in crowd
                    ),
                ]
            )

    result = await users.ImportUsers(batches())
    assert (result.created_count, result.updated_count, result.failed_count) == (1001, 8008, 0)
    user = (await users.GetUser(users_pb2.GetUserRequest(email=repeated))).user
    assert struct_to_dict(user.attributes) == {"step": 8}
    steps = await admin.fetch(
        "SELECT attributes->>'step' AS step, count(*) FROM users.users"
        " WHERE lower(email) = ANY($1::text[]) GROUP BY 1",
        [email.lower() for email in crowd],
    )
    assert [(row["step"], row["count"]) for row in steps] == [("8", 1000)]
