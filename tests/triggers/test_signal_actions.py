"""A trigger whose action is a signal: its firing broadcasts the signal for the
event's user (BroadcastSignal restricted to that user) through the starter, as
a start goes: the user's waiting executions move on, a signal start workflow
starts for them, an outage of the workflows service loses and repeats nothing,
and re-entry limits firings as for starts."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2
from runtime.structs import struct_to_dict
from tests.support import eventually, rpc_error, violated_fields
from tests.triggers.conftest import (
    INSTANT,
    Suite,
    deploy,
    event,
    lifecycle_events,
    new_user,
    settled,
    track,
    unique_type,
)
from tests.workflows.bpmn_docs import (
    chain,
    definitions,
    end,
    service,
    signal_event,
    start,
    with_signal,
)


def waits_twice(name: str) -> str:
    """Waits for the signal at `first`, then again at `second`: a repeated
    delivery would end it."""
    return with_signal(
        definitions(
            start(),
            signal_event("intermediateCatchEvent", "first"),
            signal_event("intermediateCatchEvent", "second"),
            end(),
            *chain("start", "first", "second", "end"),
        ),
        name,
    )


def started_by(name: str) -> str:
    """Starts on the signal, then waits for a job."""
    return with_signal(
        definitions(
            signal_event("startEvent", "start"),
            service("work", "signal.trigger.work"),
            end(),
            *chain("start", "work", "end"),
        ),
        name,
    )


async def signal_trigger(
    suite: Suite, event_type: str, signal_name: str, reentry: pb.ReentryPolicy | None = None
) -> pb.Trigger:
    reply = await suite.triggers.CreateTrigger(
        pb.CreateTriggerRequest(
            trigger=pb.Trigger(
                name=f"signal on {event_type}",
                event_type=event_type,
                signal_name=signal_name,
                reentry=reentry,
            )
        )
    )
    return reply.trigger


async def waiting_execution(suite: Suite, workflow: str, user: str) -> str:
    reply = await suite.workflows.StartExecution(
        workflows_pb2.StartExecutionRequest(workflow_id=workflow, user_id=user)
    )
    assert list(reply.execution.current_node_ids) == ["first"]
    return reply.execution.id


async def execution(suite: Suite, execution_id: str) -> workflows_pb2.Execution:
    reply = await suite.workflows.GetExecution(
        workflows_pb2.GetExecutionRequest(execution_id=execution_id)
    )
    return reply.execution


async def test_the_signal_moves_on_the_events_user_only(suite: Suite) -> None:
    name, kind = unique_type("wake"), unique_type("upgraded")
    workflow = await deploy(suite.workflows, waits_twice(name))
    alice, bob = await new_user(suite.users), await new_user(suite.users)
    alices, bobs = [await waiting_execution(suite, workflow, u) for u in (alice, bob)]
    trigger = await signal_trigger(suite, kind, name)
    assert (trigger.signal_name, trigger.workflow_id) == (name, "")

    await track(suite.triggers, event(alice, kind, plan="pro"))

    [fired] = await settled(suite.triggers, trigger.id, 1)
    assert fired.user_id == alice and not fired.workflow_execution_id and not fired.skip_reason
    assert fired.signal == pb.SignalBroadcast(signal_name=name, delivered_count=1, started_count=0)
    moved = await execution(suite, alices)
    assert list(moved.current_node_ids) == ["second"]
    variables = struct_to_dict(moved.variables)
    assert variables["event"]["data"] == {"plan": "pro"}
    assert variables["trigger_id"] == trigger.id
    assert list((await execution(suite, bobs)).current_node_ids) == ["first"]

    async def recorded() -> bool:
        return bool(await lifecycle_events(suite.metrics, alice, "trigger.fired"))

    await eventually(recorded)
    [logged] = await lifecycle_events(suite.metrics, alice, "trigger.fired")
    assert struct_to_dict(logged.data) == {
        "trigger_id": trigger.id,
        "event_type": kind,
        "signal_name": name,
        "delivered_count": 1,
        "started_count": 0,
    }


async def test_a_signal_start_workflow_starts_for_the_events_user(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    name, kind = unique_type("launch"), unique_type("joined")
    workflow = await deploy(suite.workflows, started_by(name))
    trigger = await signal_trigger(suite, kind, name)
    alice = await new_user(suite.users)

    await track(suite.triggers, event(alice, kind))

    [fired] = await settled(suite.triggers, trigger.id, 1)
    assert (fired.signal.delivered_count, fired.signal.started_count) == (0, 1)
    rows = await admin.fetch(
        "SELECT user_id::text, variables ->> 'trigger_id' AS trigger_id"
        " FROM workflows.workflow_executions WHERE workflow_id = $1",
        uuid.UUID(workflow),
    )
    assert [(row["user_id"], row["trigger_id"]) for row in rows] == [(alice, trigger.id)]


async def test_a_workflows_outage_delays_the_signal_and_repeats_nothing(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    name, kind = unique_type("outage"), unique_type("paid")
    workflow = await deploy(suite.workflows, waits_twice(name))
    alice = await new_user(suite.users)
    waiting = await waiting_execution(suite, workflow, alice)
    trigger = await signal_trigger(suite, kind, name)
    await suite.stop_workflows()
    try:
        await track(suite.triggers, event(alice, kind))
        row = await admin.fetchrow(
            "SELECT signal_name FROM triggers.pending_starts WHERE trigger_id = $1",
            uuid.UUID(trigger.id),
        )
        assert row is not None and row["signal_name"] == name
        # Kept to send again later, as if the answer to the broadcast had been lost.
        await admin.execute(
            "CREATE TEMP TABLE lost_signal AS SELECT * FROM triggers.pending_starts"
            " WHERE trigger_id = $1",
            uuid.UUID(trigger.id),
        )
    finally:
        await suite.start_workflows()
    [fired] = await settled(suite.triggers, trigger.id, 1)
    assert fired.signal.delivered_count == 1
    assert list((await execution(suite, waiting)).current_node_ids) == ["second"]

    await admin.execute(
        "INSERT INTO triggers.pending_starts SELECT * FROM lost_signal;"
        " UPDATE triggers.pending_starts SET available_at = now()"
    )

    async def resent() -> bool:
        left = await admin.fetchval(
            "SELECT count(*) FROM triggers.pending_starts WHERE trigger_id = $1",
            uuid.UUID(trigger.id),
        )
        return bool(left == 0)

    await eventually(resent)
    assert list((await execution(suite, waiting)).current_node_ids) == ["second"]
    [again] = await settled(suite.triggers, trigger.id, 1)
    assert again.signal == fired.signal


async def test_reentry_limits_the_signals_as_it_limits_starts(suite: Suite) -> None:
    name, kind = unique_type("once"), unique_type("visited")
    workflow = await deploy(suite.workflows, waits_twice(name))
    alice = await new_user(suite.users)
    waiting = await waiting_execution(suite, workflow, alice)
    once = pb.ReentryPolicy(mode=pb.REENTRY_MODE_ONCE_PER_USER)
    trigger = await signal_trigger(suite, kind, name, once)

    await track(suite.triggers, event(alice, kind))
    await settled(suite.triggers, trigger.id, 1)
    await track(suite.triggers, event(alice, kind))

    found = await settled(suite.triggers, trigger.id, 2)
    newest, oldest = found
    assert oldest.signal.delivered_count == 1
    assert newest.skip_reason == "REENTRY_LIMIT" and not newest.HasField("signal")
    assert list((await execution(suite, waiting)).current_node_ids) == ["second"]


@pytest.mark.parametrize(
    ("workflow_id", "signal_name", "field"),
    [
        ("", "", "trigger.workflow_id"),
        (str(uuid.uuid4()), "wake", "trigger.signal_name"),
        ("", "   ", "trigger.signal_name"),
        ("", "s" * 256, "trigger.signal_name"),
    ],
)
async def test_a_trigger_has_exactly_one_valid_action(
    suite: Suite, workflow_id: str, signal_name: str, field: str
) -> None:
    error = await rpc_error(
        suite.triggers.CreateTrigger(
            pb.CreateTriggerRequest(
                trigger=pb.Trigger(
                    name="bad action",
                    event_type="signup",
                    workflow_id=workflow_id,
                    signal_name=signal_name,
                )
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [field]


async def test_an_update_replaces_the_action(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    trigger = await signal_trigger(suite, unique_type("switch"), "first-signal")

    async def update(paths: list[str], workflow_id: str = "", signal_name: str = "") -> pb.Trigger:
        reply = await suite.triggers.UpdateTrigger(
            pb.UpdateTriggerRequest(
                trigger=pb.Trigger(id=trigger.id, workflow_id=workflow_id, signal_name=signal_name),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
        return reply.trigger

    to_workflow = await update(["workflow_id"], workflow_id=workflow)
    assert (to_workflow.workflow_id, to_workflow.signal_name) == (workflow, "")
    to_signal = await update(["workflow_id", "signal_name"], signal_name="second-signal")
    assert (to_signal.workflow_id, to_signal.signal_name) == ("", "second-signal")
    # Clearing the signal without a workflow, or setting both.
    for paths, workflow_id, signal_name in (
        (["signal_name"], "", ""),
        (["workflow_id", "signal_name"], workflow, "x"),
    ):
        error = await rpc_error(update(paths, workflow_id, signal_name))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["trigger.signal_name"]
    kept = await suite.triggers.GetTrigger(pb.GetTriggerRequest(trigger_id=trigger.id))
    assert (kept.trigger.workflow_id, kept.trigger.signal_name) == ("", "second-signal")


async def test_a_signal_restricted_to_users_names_them(suite: Suite) -> None:
    error = await rpc_error(
        suite.workflows.BroadcastSignal(
            workflows_pb2.BroadcastSignalRequest(signal_name="wake", restrict_to_users=True)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["user_ids"]
