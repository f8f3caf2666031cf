"""RecordUserEvents and the events a profile carries, over real gRPC and
PostgreSQL: what is kept (once per message id, only of existing users, never
in the future, not older than the retention), the re-evaluations it asks of
the segments service, the erase and the retention."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest

from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from runtime.config import ConfigError
from runtime.structs import set_timestamp
from services.users.maintenance import maintenance
from services.users.settings import EVENT_RETENTION_VARIABLE, load_settings
from tests.support import ScratchDatabase, rpc_error, violated_fields

pytestmark = pytest.mark.users

if TYPE_CHECKING:
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub as Stub


async def create(users: Stub) -> str:
    user = users_pb2.User(email=f"events-{uuid.uuid4().hex[:12]}@example.com")
    return (await users.CreateUser(users_pb2.CreateUserRequest(user=user))).user.id


def event(
    user_id: str, kind: str, at: datetime, data: str = "{}", message_id: str | None = None
) -> users_pb2.UserEvent:
    message = users_pb2.UserEvent(
        message_id=message_id or uuid.uuid4().hex, user_id=user_id, event_type=kind, data_json=data
    )
    set_timestamp(message.occur_time, at)
    return message


async def record(users: Stub, *events: users_pb2.UserEvent) -> int:
    request = users_pb2.RecordUserEventsRequest(events=events)
    return (await users.RecordUserEvents(request)).recorded_count


async def kept(admin: asyncpg.Connection, user_id: str) -> list[tuple[str, datetime, object]]:
    rows = await admin.fetch(
        "SELECT event_type, occurred_at, data FROM users.user_events WHERE user_id = $1"
        " ORDER BY occurred_at",
        uuid.UUID(user_id),
    )
    return [(row["event_type"], row["occurred_at"], json.loads(row["data"])) for row in rows]


async def reevaluations(admin: asyncpg.Connection, user_id: str) -> list[list[str]]:
    """The event types of the re-evaluations for events of a user waiting in the outbox."""
    found = []
    for row in await admin.fetch(
        "SELECT payload FROM users.outbox WHERE topic = 'segments.reevaluate_users' ORDER BY id"
    ):
        request = segments_pb2.ReevaluateUsersRequest.FromString(row["payload"])
        found += [
            list(c.event_types) for c in request.changes if c.user_id == user_id and c.event_types
        ]
    return found


async def test_events_are_kept_once_for_existing_users_and_their_segments_reevaluated(
    users: Stub, admin: asyncpg.Connection
) -> None:
    user_id, stranger = await create(users), str(uuid.uuid4())
    now = datetime.now(UTC)
    bought = event(user_id, "purchase", now - timedelta(days=1), '{"amount": 12.50}', "m-1")
    later = now + timedelta(hours=3)
    recorded = await record(
        users,
        bought,
        event(user_id, "login", later),
        event(stranger, "purchase", now),
        # Older than the retention (400 days): never read by a condition.
        event(user_id, "purchase", now - timedelta(days=401)),
    )
    assert recorded == 2
    assert await record(users, bought) == 0
    stored = await kept(admin, user_id)
    assert [(kind, data) for kind, _, data in stored] == [
        ("purchase", {"amount": 12.50}),
        ("login", {}),
    ]
    # A person's events are never in the future: the login is kept as received.
    assert stored[0][1] == now - timedelta(days=1)
    assert now <= stored[1][1] < later
    assert await reevaluations(admin, user_id) == [["login", "purchase"]]
    assert await reevaluations(admin, stranger) == []


async def test_profiles_carry_the_events_asked_for(users: Stub) -> None:
    user_id = await create(users)
    now = datetime.now(UTC)
    await record(
        users,
        event(user_id, "purchase", now - timedelta(days=10)),
        event(user_id, "purchase.refund", now - timedelta(days=2), '{"n": 1}'),
        event(user_id, "purchase", now - timedelta(days=1)),
        event(user_id, "login", now - timedelta(hours=1)),
    )
    request = users_pb2.BatchGetUserProfilesRequest(
        user_ids=[user_id], event_types=["purchase.*", "purchase"]
    )
    set_timestamp(request.events_since, now - timedelta(days=5))
    (profile,) = (await users.BatchGetUserProfiles(request)).profiles
    assert [(e.event_type, e.data_json) for e in profile.events] == [
        ("purchase.refund", '{"n": 1}'),
        ("purchase", "{}"),
    ]
    plain = users_pb2.BatchGetUserProfilesRequest(user_ids=[user_id])
    (without,) = (await users.BatchGetUserProfiles(plain)).profiles
    assert list(without.events) == []


async def test_bad_events_are_refused_naming_each_field(users: Stub) -> None:
    good = event(str(uuid.uuid4()), "purchase", datetime.now(UTC))
    bad = users_pb2.UserEvent(user_id="nope", data_json="[1]")
    error = await rpc_error(record(users, good, bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [
        "events[1].message_id",
        "events[1].event_type",
        "events[1].user_id",
        "events[1].occur_time",
        "events[1].data_json",
    ]
    reads = users_pb2.BatchGetUserProfilesRequest(event_types=["purchase", "a*b", ""])
    error = await rpc_error(users.BatchGetUserProfiles(reads))
    assert violated_fields(error) == ["event_types[1]", "event_types[2]"]


async def test_the_erase_and_the_retention_delete_events(
    users: Stub, admin: asyncpg.Connection, database: ScratchDatabase
) -> None:
    erased, kept_user = await create(users), await create(users)
    now = datetime.now(UTC)
    await record(users, event(erased, "purchase", now), event(kept_user, "purchase", now))
    await record(users, event(kept_user, "login", now - timedelta(days=399, hours=23)))
    etag = (await users.GetUser(users_pb2.GetUserRequest(user_id=erased))).user.etag
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=erased, etag=etag))
    assert await kept(admin, erased) == []
    # Two days on, the login is older than the 400 days events are kept.
    conn = await asyncpg.connect(database.admin_url, server_settings={"search_path": "users"})
    try:
        report = await maintenance(conn, date.today() + timedelta(days=2))
    finally:
        await conn.close()
    assert [kind for kind, _, _ in await kept(admin, kept_user)] == ["purchase"]
    assert report[0].startswith("deleted ")


def test_the_retention_is_a_setting_never_shorter_than_a_window() -> None:
    assert load_settings({}).event_retention == timedelta(days=400)
    assert load_settings({EVENT_RETENTION_VARIABLE: "730"}).event_retention == timedelta(days=730)
    for value, problem in (("399", "shorter than the longest window"), ("x", "whole number")):
        with pytest.raises(ConfigError, match=EVENT_RETENTION_VARIABLE) as refused:
            load_settings({EVENT_RETENTION_VARIABLE: value})
        assert problem in str(refused.value)
