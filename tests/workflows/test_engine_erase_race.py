"""An erase that races the user's starts, messages and steps: whatever commits
first, nothing of the user is left once the erase answered. The held-lock tests
hold an erase at its lock, see the other work wait for it, and then find the
tombstone or nothing left."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import asyncpg
import grpc
from google.protobuf import duration_pb2

from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.database import connection
from runtime.server import ServiceHost
from services.workflows.domain import SET_STAGE
from services.workflows.store import executions as store
from services.workflows.store.locks import lock_users_alone
from tests.support import error_info, rpc_error
from tests.workflows.bpmn_docs import (
    call,
    catch,
    definitions,
    end,
    flow,
    linear,
    parallel,
    receive,
    service,
    start,
)
from tests.workflows.conftest import (
    Stub,
    deploy,
    new_user,
    publish,
    until_ended,
    until_waiting_for_user,
)
from tests.workflows.conftest import start as start_execution

ROUNDS = 40
STARTS_PER_ROUND = 3


def waiting_everywhere(child_id: str) -> str:
    """A fork into a job, a timer, a message subscription and a called execution."""
    branches = {
        "work": service("work", "race-job"),
        "later": catch("later", duration="PT1H"),
        "hear": receive("hear", "race-hear"),
        "child": call("child", child_id),
    }
    flows = []
    for n, element in enumerate(branches, 1):
        flows += [flow(f"to{n}", "fork", element), flow(f"out{n}", element, f"end{n}")]
    return definitions(
        start(),
        parallel("fork"),
        *branches.values(),
        *(end(f"end{n}") for n in range(1, len(branches) + 1)),
        flow("f0", "start", "fork"),
        *flows,
    )


async def answered(call_: Awaitable[object]) -> None:
    """Waits for the call; the only refusal it may get is the user's erase."""
    try:
        await call_
    except grpc.aio.AioRpcError as error:
        assert error_info(error).reason == "USER_ERASED", error.details()


async def test_an_erase_racing_starts_and_messages_leaves_nothing_of_the_user(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    child = await deploy(wf, linear(start(), catch("stay", message="never"), end()), name="child")
    racing = await deploy(wf, waiting_everywhere(child.id), name="racing")
    signal = f"race_start_{uuid.uuid4().hex[:8]}"
    await deploy(wf, linear(start(message=signal), catch("idle", duration="P1D"), end()))
    ttl = duration_pb2.Duration(seconds=3600)
    users = [str(uuid.uuid4()) for _ in range(ROUNDS)]
    for user in users:
        starts = [
            answered(
                wf.StartExecution(
                    pb.StartExecutionRequest(
                        workflow_id=racing.id,
                        user_id=user,
                        conflict_policy=pb.CONFLICT_POLICY_ALLOW_PARALLEL,
                    )
                )
            )
            for _ in range(STARTS_PER_ROUND)
        ]
        messages = [
            answered(wf.PublishMessage(pb.PublishMessageRequest(name=name, correlation_key=user)))
            for name in (signal, "race-hear")
        ]
        unheard = pb.PublishMessageRequest(
            name="race-unheard", correlation_key=user, time_to_live=ttl
        )
        buffered = answered(wf.PublishMessage(unheard))
        erase = answered(wf.EraseUserData(pb.EraseUserDataRequest(user_id=user)))
        await asyncio.gather(*starts[:2], erase, *starts[2:], *messages, buffered)

    ids = [uuid.UUID(user) for user in users]
    left = await admin.fetchrow(
        "SELECT"
        " (SELECT count(*) FROM workflows.workflow_executions WHERE user_id = ANY($1))"
        "  AS executions,"
        " (SELECT count(*) FROM workflows.timers t JOIN workflows.workflow_executions e"
        "  ON e.id = t.execution_id WHERE e.user_id = ANY($1)) AS timers,"
        " (SELECT count(*) FROM workflows.jobs WHERE user_id = ANY($1)) AS jobs,"
        " (SELECT count(*) FROM workflows.message_subscriptions WHERE user_id = ANY($1))"
        "  AS subscriptions,"
        " (SELECT count(*) FROM workflows.messages WHERE user_id = ANY($1)) AS messages",
        ids,
    )
    assert left is not None
    assert dict(left) == dict.fromkeys(
        ("executions", "timers", "jobs", "subscriptions", "messages"), 0
    )


async def held_of(admin: asyncpg.Connection, user: uuid.UUID) -> dict[str, int]:
    """What the workflows service holds of the user."""
    row = await admin.fetchrow(
        "SELECT"
        " (SELECT count(*) FROM workflows.workflow_executions WHERE user_id = $1) AS executions,"
        " (SELECT count(*) FROM workflows.jobs WHERE user_id = $1) AS jobs,"
        " (SELECT count(*) FROM workflows.messages WHERE user_id = $1) AS messages",
        user,
    )
    assert row is not None
    return dict(row)


NOTHING = {"executions": 0, "jobs": 0, "messages": 0}


@asynccontextmanager
async def erasing(host: ServiceHost, user: uuid.UUID, erased: int) -> AsyncIterator[None]:
    """An erase of the user that holds its lock through the block, then deletes
    (`erased` executions) and commits."""
    assert host.context is not None
    async with connection(host.context.pool) as eraser:
        transaction = eraser.transaction()
        await transaction.start()
        await lock_users_alone(eraser, [user])
        yield
        assert await store.erase_user(eraser, user) == erased
        await transaction.commit()


async def test_a_step_waits_for_an_erase_and_the_timer_worker_passes_it_by(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    running = await start_execution(wf, workflow)
    user, execution_id = uuid.UUID(running.user_id), uuid.UUID(running.id)
    assert wf_host.context is not None
    async with connection(wf_host.context.pool) as stepper:
        async with erasing(wf_host, user, erased=1):
            async with stepper.transaction():
                skipped = await store.lock_executions(stepper, [execution_id], skip_locked=True)
                assert skipped == {}
            stepping = stepper.transaction()
            await stepping.start()
            step = asyncio.ensure_future(store.lock_executions(stepper, [execution_id]))
            await until_waiting_for_user(admin, user)
        assert await step == {}
        await stepping.commit()


async def test_a_start_alone_waits_for_an_erase_and_is_refused(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    user = uuid.uuid4()
    # One start with a request_id: a batch of one, which starts alone.
    request = pb.StartExecutionRequest(
        workflow_id=workflow.id, user_id=str(user), request_id=str(uuid.uuid4())
    )
    async with erasing(wf_host, user, erased=0):
        started = asyncio.ensure_future(wf.StartExecution(request))
        await until_waiting_for_user(admin, user)
    error = await rpc_error(started)
    assert error_info(error).reason == "USER_ERASED"
    assert await held_of(admin, user) == NOTHING


async def test_a_publish_waits_for_an_erase_and_drops_the_message(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    signal = f"erased_start_{uuid.uuid4().hex[:8]}"
    await deploy(wf, linear(start(message=signal), catch("idle", message="never"), end()))
    user = uuid.uuid4()
    async with erasing(wf_host, user, erased=0):
        sent = asyncio.ensure_future(
            publish(wf, signal, str(user), ttl_seconds=3600, message_id=str(uuid.uuid4()))
        )
        await until_waiting_for_user(admin, user)
    reply = await sent
    assert (reply.delivered_count, reply.buffered, reply.duplicate) == (0, False, False)
    assert await held_of(admin, user) == NOTHING


async def test_the_job_worker_waits_for_an_erase_to_record_a_failure_and_leaves_nothing(
    wf: Stub,
    wf_host: ServiceHost,
    admin: asyncpg.Connection,
    wf_users: users_pb2_grpc.UserServiceAsyncStub,
) -> None:
    workflow = await deploy(
        wf, linear(start(), service("stage", SET_STAGE, stage="Activation"), end())
    )
    user = uuid.UUID(await new_user(wf_users))
    # The users service's TransitionStage waits on the user's row until the
    # erase holds its lock; the user is gone then, a failure the job records.
    deleting = admin.transaction()
    await deleting.start()
    await admin.execute("SELECT 1 FROM users.users WHERE id = $1 FOR UPDATE", user)
    await start_execution(wf, workflow, str(user))
    async with erasing(wf_host, user, erased=1):
        await admin.execute("DELETE FROM users.users WHERE id = $1", user)
        await deleting.commit()
        (finish,) = await until_waiting_for_user(admin, user)
    await until_ended(admin, finish)
    assert await held_of(admin, user) == NOTHING
