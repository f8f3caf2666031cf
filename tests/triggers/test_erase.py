"""A user's erase: what the triggers service held of them goes, a tombstone
stays, and their later events are refused."""

from __future__ import annotations

import uuid

import asyncpg
import grpc

from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.users.v1 import users_pb2
from tests.support import error_info, eventually, rpc_error, violated_fields
from tests.triggers.conftest import (
    INSTANT,
    Suite,
    create_trigger,
    deploy,
    event,
    executions_of,
    new_user,
    settled,
    track,
    unique_type,
)


async def held(admin: asyncpg.Connection, user: str) -> tuple[int, int, int]:
    row = await admin.fetchrow(
        "SELECT (SELECT count(*) FROM triggers.trigger_executions WHERE user_id = $1) AS runs,"
        " (SELECT count(*) FROM triggers.events WHERE user_id = $1) AS events,"
        " (SELECT count(*) FROM triggers.trigger_entries WHERE user_id = $1) AS entries",
        uuid.UUID(user),
    )
    assert row is not None
    return row["runs"], row["events"], row["entries"]


async def test_erase_removes_the_users_data_and_refuses_their_later_events(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    once = pb.ReentryPolicy(mode=pb.REENTRY_MODE_ONCE_PER_USER)
    trigger = await create_trigger(suite.triggers, kind, workflow, reentry=once)
    user, other = await new_user(suite.users), await new_user(suite.users)
    await track(suite.triggers, event(user, kind), event(user, kind), event(other, kind))
    await settled(suite.triggers, trigger.id, 3)
    assert await held(admin, user) == (2, 2, 1)

    reply = await suite.triggers.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert reply.erased_count == 4
    assert await held(admin, user) == (0, 0, 0)
    assert await executions_of(suite.triggers, user_id=user) == []
    assert len(await executions_of(suite.triggers, user_id=other)) == 1
    again = await suite.triggers.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert again.erased_count == 0

    error = await rpc_error(
        suite.triggers.TrackEvent(pb.TrackEventRequest(event=event(user, kind)))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "USER_ERASED"
    batch = await track(suite.triggers, event(other, kind), event(user, kind))
    assert batch.accepted_count == 1
    assert [(e.index, e.field, e.reason) for e in batch.errors] == [(1, "user_id", "USER_ERASED")]
    assert await held(admin, user) == (0, 0, 0)
    error = await rpc_error(suite.triggers.EraseUserData(pb.EraseUserDataRequest(user_id="x")))
    assert violated_fields(error) == ["user_id"]


async def test_delete_user_reaches_the_triggers_service(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    trigger = await create_trigger(suite.triggers, kind, workflow)
    user = await new_user(suite.users)
    await track(suite.triggers, event(user, kind))
    await settled(suite.triggers, trigger.id, 1)
    await suite.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user))

    async def erased() -> bool:
        return bool(
            await admin.fetchval(
                "SELECT count(*) FROM triggers.erased_users WHERE user_id = $1", uuid.UUID(user)
            )
        )

    await eventually(erased)
    assert await held(admin, user) == (0, 0, 0)
