"""PublishMessage: delivered to every execution of the user that waits for it;
buffered for its time to live only when none received it; deduplicated by
message_id."""

from __future__ import annotations

import uuid

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import struct_to_dict
from services.workflows.clock import ManualClock
from tests.workflows.bpmn_docs import catch, end, linear, receive, start
from tests.workflows.conftest import Stub, advance, deploy, execution, publish
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
