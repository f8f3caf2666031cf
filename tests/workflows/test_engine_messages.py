"""PublishMessage: delivered to every execution of the user that waits for it;
buffered for its time to live only when none received it; deduplicated by
message_id; serialized with the steps of its user."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.database import connection
from runtime.server import ServiceHost
from runtime.structs import struct_to_dict
from services.workflows.domain import NewMessage
from services.workflows.maintenance import maintenance
from services.workflows.store import executions, locks, messages
from services.workflows.store.messages import Waiting
from tests.workflows.bpmn_docs import catch, end, linear, receive, start
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    publish,
    until_waiting_for_user,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED


def fresh_name() -> str:
    return f"msg_{uuid.uuid4().hex[:10]}"


async def waiting_at(wf: Stub, execution_id: str) -> list[str]:
    return list((await execution(wf, execution_id)).current_node_ids)


async def test_a_delivered_message_is_not_buffered_and_its_id_still_deduplicates(wf: Stub) -> None:
    name = fresh_name()
    twice = await deploy(
        wf, linear(start(), catch("first", message=name), catch("second", message=name), end())
    )
    later = await deploy(wf, linear(start(), catch("late", message=name), end()))
    user = str(uuid.uuid4())
    running = await start_execution(wf, twice, user)
    key = f"once-{uuid.uuid4()}"

    sent = await publish(wf, name, user, ttl_seconds=3600, message_id=key, n=1)
    assert (sent.delivered_count, sent.buffered, sent.duplicate) == (1, False, False)
    # Received once: the next catch of the same name in the same step does not get it again.
    assert await waiting_at(wf, running.id) == ["second"]
    late = await start_execution(wf, later, user)
    assert list(late.current_node_ids) == ["late"]
    again = await publish(wf, name, user, ttl_seconds=3600, message_id=key, n=2)
    assert (again.delivered_count, again.buffered, again.duplicate) == (0, False, True)
    assert await waiting_at(wf, running.id) == ["second"]
    assert await waiting_at(wf, late.id) == ["late"]


async def test_a_buffered_message_is_received_within_its_time_to_live_and_not_after(
    wf: Stub, clock: ManualClock
) -> None:
    name = fresh_name()
    workflow = await deploy(wf, linear(start(), catch("wait", message=name), end()))
    in_time, too_late = str(uuid.uuid4()), str(uuid.uuid4())

    kept = await publish(wf, name, in_time, ttl_seconds=60, fresh=True)
    assert (kept.delivered_count, kept.buffered) == (0, True)
    await advance(clock, seconds=59)
    received = await start_execution(wf, workflow, in_time)
    assert received.status == COMPLETED
    assert struct_to_dict(received.variables) == {"fresh": True}

    assert (await publish(wf, name, too_late, ttl_seconds=60)).buffered
    await advance(clock, seconds=61)
    expired = await start_execution(wf, workflow, too_late)
    assert list(expired.current_node_ids) == ["wait"]
    assert await waiting_at(wf, expired.id) == ["wait"]


async def test_a_message_reaches_every_execution_of_the_user_that_waits_for_it(wf: Stub) -> None:
    name = fresh_name()
    by_catch = await deploy(wf, linear(start(), catch("caught", message=name), end()))
    by_task = await deploy(wf, linear(start(), receive("received", name), end()))
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    first = await start_execution(wf, by_catch, user)
    beside = await wf.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=by_catch.id,
            user_id=user,
            conflict_policy=pb.CONFLICT_POLICY_ALLOW_PARALLEL,
        )
    )
    third = await start_execution(wf, by_task, user)
    elsewhere = await start_execution(wf, by_catch, other)

    sent = await publish(wf, name, user, ttl_seconds=60, seen=True)
    assert (sent.delivered_count, sent.buffered) == (3, False)
    for execution_id in (first.id, beside.execution.id, third.id):
        done = await execution(wf, execution_id)
        assert done.status == COMPLETED
        assert struct_to_dict(done.variables) == {"seen": True}
    assert await waiting_at(wf, elsewhere.id) == ["caught"]


async def test_a_message_id_kept_for_deduplication_is_never_received_and_expires_a_day_on(
    wf_host: ServiceHost,
) -> None:
    assert wf_host.context is not None
    user, name = uuid.uuid4(), fresh_name()
    # Before any execution of the test clock ended: retention removes no execution.
    published = datetime(2029, 6, 1, 12, tzinfo=UTC)
    message = NewMessage(name, user, f"kept-{uuid.uuid4()}", {"secret": 1}, timedelta(0))
    wanted = [Waiting(uuid.uuid4(), user, name)]
    async with connection(wf_host.context.pool) as conn:
        rolled_back = conn.transaction()
        await rolled_back.start()
        try:
            assert await messages.record_message_ids(conn, [message], published) == {user}
            assert await messages.record_message_ids(conn, [message], published) == set()
            # A step whose clock was read before the publish, or after it.
            for now in (published - timedelta(seconds=1), published, published + timedelta(days=1)):
                assert await messages.buffered_messages(conn, wanted, now) == {}

            async def kept() -> bool:
                count = await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE message_id = $1", message.message_id
                )
                return bool(count)

            await maintenance(conn, date(2029, 6, 2))
            assert await kept()
            await maintenance(conn, date(2029, 6, 3))
            assert not await kept()
        finally:
            await rolled_back.rollback()


async def test_a_publish_waits_for_a_step_of_its_user_then_steps_under_its_lock(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    signal = fresh_name()
    await deploy(wf, linear(start(message=signal), catch("idle", message="never"), end()))
    waiting = await deploy(wf, linear(start(), catch("wait", message=signal), end()))
    running = await start_execution(wf, waiting)
    user = uuid.UUID(running.user_id)
    assert wf_host.context is not None
    async with connection(wf_host.context.pool) as stepper:
        step = stepper.transaction()
        await step.start()
        await executions.lock_executions(stepper, [uuid.UUID(running.id)])
        sent = asyncio.ensure_future(publish(wf, signal, running.user_id, ttl_seconds=60))
        await until_waiting_for_user(admin, user)
        # Queued behind the publish: the publish, holding the lock alone, takes
        # it shared again to step the execution it delivers to, past the erase.
        erased = asyncio.ensure_future(wf.EraseUserData(pb.EraseUserDataRequest(user_id=str(user))))
        await until_waiting_for_user(admin, user, waiters=2)
        await step.commit()
    reply = await sent
    assert (reply.delivered_count, reply.buffered) == (2, False)
    assert (await erased).erased_count == 2


async def test_a_step_waits_for_a_publish_of_its_user(
    wf: Stub, wf_host: ServiceHost, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    running = await start_execution(wf, workflow)
    assert wf_host.context is not None
    async with connection(wf_host.context.pool) as publisher:
        publishing = publisher.transaction()
        await publishing.start()
        await locks.lock_users_alone(publisher, [uuid.UUID(running.user_id)])
        cancel = pb.CancelExecutionRequest(execution_id=running.id)
        cancelled = asyncio.ensure_future(wf.CancelExecution(cancel))
        await until_waiting_for_user(admin, running.user_id)
        await publishing.commit()
    assert (await cancelled).execution.status == pb.EXECUTION_STATUS_CANCELLED
