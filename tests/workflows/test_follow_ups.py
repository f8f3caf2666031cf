"""What one execution's step asks of another (a message thrown, a child's
end) is never left out of the step: a timer's step may leave its own
execution for later, not the receiver of its message."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc

from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from services.workflows.service import DEFINITION, build_with
from tests.support import TRACER_PROVIDER, eventually, free_port, running, service_config
from tests.workflows.bpmn_docs import (
    catch,
    chain,
    definitions,
    end,
    flow,
    receive,
    service,
    start,
    xor,
)
from tests.workflows.conftest import deploy, execution, new_user, until_waiting_at
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED

# Waits for "ping", then reads the user's profile.
RECEIVER = definitions(
    start(),
    receive("wait", "ping"),
    xor("which", default="to_other"),
    end("retained"),
    end("other"),
    *chain("start", "wait", "which"),
    flow("to_retained", "which", "retained", '=user.stage == "Retention"'),
    flow("to_other", "which", "other"),
    process_id="Receiver",
)
# A minute after it starts, throws "ping" to its user's executions.
THROWER = definitions(
    start(),
    catch("later", duration="PT1M"),
    service("tell", "lifecycle.publish_message", messageName="ping"),
    end(),
    *chain("start", "later", "tell", "end"),
    process_id="Thrower",
)


async def test_a_timer_step_waits_for_the_receiver_of_its_message_rather_than_drop_it(
    wf_env: dict[str, str], admin: asyncpg.Connection
) -> None:
    env = {
        **wf_env,
        "LIFECYCLE_WORKFLOWS_PORT": str(free_port()),
        "LIFECYCLE_USERS_PORT": str(users_port := free_port()),
        "LIFECYCLE_USERS_ADDRESS": f"127.0.0.1:{users_port}",
        "LIFECYCLE_WORKFLOWS_POLL_SECONDS": "0.1",
    }
    clock = ManualClock(datetime(2031, 1, 1, tzinfo=UTC))
    definition = replace(DEFINITION, build=build_with(clock))
    host = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            wf = workflows_pb2_grpc.WorkflowServiceStub(channel)
            async with (
                running("users", env) as users_host,
                grpc.aio.insecure_channel(users_host.address) as users_channel,
            ):
                user = await new_user(users_pb2_grpc.UserServiceStub(users_channel))
                receiver = await start_execution(wf, await deploy(wf, RECEIVER), user)
                await until_waiting_at(wf, receiver.id, "wait")
            # The users service is down: the receiver's step cannot read the profile.
            thrower = await start_execution(wf, await deploy(wf, THROWER), user)
            clock.advance(timedelta(minutes=2))

            async def timer_tried() -> bool:
                """The thrower's timer fired, or its step failed and set it aside."""
                due = await admin.fetchval(
                    "SELECT due_at FROM workflows.timers WHERE execution_id = $1",
                    uuid.UUID(thrower.id),
                )
                return due is None or due > clock.now()

            await eventually(timer_tried)
            assert list((await execution(wf, receiver.id)).current_node_ids) == ["wait"]
            async with running("users", env):

                async def both_done() -> bool:
                    # The thrower's timer was set aside a minute at each failure.
                    clock.advance(timedelta(minutes=2))
                    ended = [await execution(wf, e.id) for e in (thrower, receiver)]
                    return all(e.status == COMPLETED for e in ended)

                await eventually(both_done)
            done = await execution(wf, receiver.id)
    finally:
        await host.stop()
    assert [s.element_id for s in done.history if s.state == "completed"][-1] == "other"
