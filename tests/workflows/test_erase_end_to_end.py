"""A user's erase, end to end: DeleteUser on the users service reaches the
workflows service through the users outbox, which cancels and removes the
user's waiting executions without events, while another user's execution goes
on untouched."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc

from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from tests.support import eventually, rpc_error
from tests.workflows.bpmn_docs import catch, end, linear, start
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    events_of,
    new_user,
    path,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution

NUDGE = linear(start(), catch("nudge_later", duration="P3D"), end())
FIRST_LOGIN = linear(start(), catch("first_login", message="erase_first_login"), end())


async def held(admin: asyncpg.Connection, executions: list[str]) -> int:
    """The engine rows left of these executions: the executions, their history,
    tokens, timers and message subscriptions."""
    ids = [uuid.UUID(e) for e in executions]
    count: int = await admin.fetchval(
        "SELECT (SELECT count(*) FROM workflows.workflow_executions WHERE id = ANY($1))"
        " + (SELECT count(*) FROM workflows.execution_history WHERE execution_id = ANY($1))"
        " + (SELECT count(*) FROM workflows.execution_tokens WHERE execution_id = ANY($1))"
        " + (SELECT count(*) FROM workflows.timers WHERE execution_id = ANY($1))"
        " + (SELECT count(*) FROM workflows.message_subscriptions"
        "    WHERE execution_id = ANY($1))",
        ids,
    )
    return count


async def test_delete_user_cancels_and_removes_the_users_executions_through_the_outbox(
    wf: Stub,
    wf_users: Any,
    wf_host: ServiceHost,
    admin: asyncpg.Connection,
    clock: ManualClock,
) -> None:
    on_timer = await deploy(wf, NUDGE, name="erase: waits on a timer")
    on_message = await deploy(wf, FIRST_LOGIN, name="erase: waits for a message")
    user, other = await new_user(wf_users), await new_user(wf_users)
    erased = [
        (await start_execution(wf, on_timer, user)).id,
        (await start_execution(wf, on_message, user)).id,
    ]
    kept = (await start_execution(wf, on_timer, other)).id
    await until_waiting_at(wf, erased[0], "nudge_later")
    await until_waiting_at(wf, erased[1], "first_login")
    await until_waiting_at(wf, kept, "nudge_later")
    assert await held(admin, erased) > 0

    await wf_users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user))

    async def tombstoned() -> bool:
        return bool(
            await admin.fetchval(
                "SELECT count(*) FROM workflows.erased_users WHERE user_id = $1", uuid.UUID(user)
            )
        )

    await eventually(tombstoned, seconds=30)
    assert await held(admin, erased) == 0
    listed = await wf.ListExecutions(pb.ListExecutionsRequest(user_id=user))
    assert list(listed.executions) == []
    for execution_id in erased:
        error = await rpc_error(wf.GetExecution(pb.GetExecutionRequest(execution_id=execution_id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        sent = [e.event_type for e in await events_of(wf_host, execution_id)]
        assert "execution.cancelled" not in sent

    await until_waiting_at(wf, kept, "nudge_later")
    await advance(clock, days=3, seconds=1)
    done = await until_status(wf, kept, pb.EXECUTION_STATUS_COMPLETED)
    assert path(done) == ["start", "nudge_later", "end"]
