"""An erase that races the user's starts, messages and steps: whatever commits
first, nothing of the user is left once the erase answered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import asyncpg
import grpc
from google.protobuf import duration_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.database import connection
from runtime.server import ServiceHost
from services.workflows import store
from tests.support import error_info
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
from tests.workflows.conftest import Stub, deploy
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


async def test_a_step_waits_for_an_erase_and_the_timer_worker_passes_it_by(
    wf: Stub, wf_host: ServiceHost
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    running = await start_execution(wf, workflow)
    user, execution_id = uuid.UUID(running.user_id), uuid.UUID(running.id)
    assert wf_host.context is not None
    pool = wf_host.context.pool
    async with connection(pool) as eraser, connection(pool) as stepper:
        erasing = eraser.transaction()
        await erasing.start()
        await store.lock_user_for_erase(eraser, user)
        async with stepper.transaction():
            assert await store.lock_executions(stepper, [execution_id], skip_locked=True) == {}
        async with stepper.transaction():
            step = asyncio.ensure_future(store.lock_executions(stepper, [execution_id]))
            await asyncio.sleep(0.2)
            assert not step.done(), "the step did not wait for the erase"
            assert await store.erase_user(eraser, user) == 1
            await erasing.commit()
            assert await step == {}
