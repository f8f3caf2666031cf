"""The onboarding workflow of the issue, on a manual clock: signed up, wait up
to 3 days for a first login; if it came, move the user to Activation, else emit
a nudge event and wait again, at most 3 times."""

from __future__ import annotations

from typing import Any

from lifecycle.common.v1 import stage_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from tests.support import eventually
from tests.workflows.bpmn_docs import catch, definitions, end, event_gateway, flow, service, xor
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    events_of,
    execution,
    new_user,
    path,
    publish,
    start,
    until_status,
)

ONBOARDING = definitions(
    '<bpmn:startEvent id="signed_up"><bpmn:extensionElements><zeebe:ioMapping>'
    '<zeebe:output source="=0" target="nudges"/></zeebe:ioMapping></bpmn:extensionElements>'
    "</bpmn:startEvent>",
    event_gateway("wait"),
    catch("first_login", message="first_login"),
    catch("three_days", duration="P3D"),
    xor("tried_enough", default="to_nudge"),
    '<bpmn:serviceTask id="nudge"><bpmn:extensionElements>'
    '<zeebe:taskDefinition type="lifecycle.emit_event"/><zeebe:taskHeaders>'
    '<zeebe:header key="event" value="onboarding_nudge"/>'
    '<zeebe:header key="data" value="{&quot;attempt&quot;: nudges + 1}"/></zeebe:taskHeaders>'
    '<zeebe:ioMapping><zeebe:output source="=nudges + 1" target="nudges"/></zeebe:ioMapping>'
    "</bpmn:extensionElements></bpmn:serviceTask>",
    service("activate", "lifecycle.set_stage", stage="Activation"),
    end("activated"),
    end("gave_up"),
    flow("f1", "signed_up", "wait"),
    flow("f2", "wait", "first_login"),
    flow("f3", "wait", "three_days"),
    flow("f4", "first_login", "activate"),
    flow("f5", "activate", "activated"),
    flow("f6", "three_days", "tried_enough"),
    flow("enough", "tried_enough", "gave_up", "nudges >= 3"),
    flow("to_nudge", "tried_enough", "nudge"),
    flow("again", "nudge", "wait"),
    process_id="onboarding",
)


async def until_nudged(wf: Stub, execution_id: str, times: int) -> None:
    async def nudged() -> bool:
        return path(await execution(wf, execution_id)).count("nudge") == times

    await eventually(nudged)


async def stage_of(users: Any, user_id: str) -> int:
    reply = await users.GetUser(users_pb2.GetUserRequest(user_id=user_id))
    return int(reply.user.lifecycle_stage)


async def test_onboarding_activates_on_login_and_nudges_at_most_three_times(
    wf: Stub, wf_users: Any, clock: ManualClock, wf_host: ServiceHost
) -> None:
    workflow = await deploy(wf, ONBOARDING, name="onboarding")
    quick, late, never = [await new_user(wf_users) for _ in range(3)]
    runs = {user: (await start(wf, workflow, user)).id for user in (quick, late, never)}

    await advance(clock, days=2)
    await publish(wf, "first_login", quick)
    await until_status(wf, runs[quick], pb.EXECUTION_STATUS_COMPLETED)
    assert await stage_of(wf_users, quick) == stage_pb2.LIFECYCLE_STAGE_ACTIVATION

    for day in range(1, 13):
        await advance(clock, days=1)
        if day % 3 == 0 and day < 12:
            # Each timer is re-armed from the time it fired: let it fire before time moves on.
            await until_nudged(wf, runs[never], day // 3)
        if day == 3:
            await until_nudged(wf, runs[late], 1)
            await publish(wf, "first_login", late)
    await until_status(wf, runs[late], pb.EXECUTION_STATUS_COMPLETED)
    done = await until_status(wf, runs[never], pb.EXECUTION_STATUS_COMPLETED)

    assert path(await execution(wf, runs[quick])) == [
        "signed_up",
        "wait",
        "first_login",
        "activate",
        "activated",
    ]
    assert path(await execution(wf, runs[late])) == [
        "signed_up",
        "wait",
        "three_days",
        "tried_enough",
        "nudge",
        "wait",
        "first_login",
        "activate",
        "activated",
    ]
    assert path(done) == [
        "signed_up",
        *["wait", "three_days", "tried_enough", "nudge"] * 3,
        "wait",
        "three_days",
        "tried_enough",
        "gave_up",
    ]
    assert done.variables.fields["nudges"].number_value == 3
    assert await stage_of(wf_users, late) == stage_pb2.LIFECYCLE_STAGE_ACTIVATION
    assert await stage_of(wf_users, never) == stage_pb2.LIFECYCLE_STAGE_ACQUISITION
    nudges = [
        e
        for e in await events_of(wf_host, runs[never])
        if e.event_type == "workflow.onboarding_nudge"
    ]
    assert [e.data.fields["attempt"].number_value for e in nudges] == [1, 2, 3]
