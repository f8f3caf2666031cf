"""Who did what with authentication off, as in development: a client is
anonymous, and the services still name themselves (their `lifecycle-service`
metadata), so the chains through them are kept (tests/test_attribution.py has
them with authentication on)."""

from __future__ import annotations

import uuid

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.users.v1 import users_pb2
from runtime.structs import struct_to_dict
from tests.support import eventually
from tests.triggers.conftest import (
    INSTANT,
    Suite,
    create_trigger,
    deploy,
    event,
    new_user,
    track,
    unique_type,
)
from tests.workflows.bpmn_docs import end, linear, service, start


async def chains_once_recorded(suite: Suite, user_id: str, count: int) -> dict[str, list[str]]:
    """The actors of each type of the user's events, once `count` are recorded."""
    found: list[metrics_pb2.LifecycleEvent] = []

    async def recorded() -> bool:
        reply = await suite.metrics.ListEvents(
            metrics_pb2.ListEventsRequest(user_id=user_id, page_size=1000)
        )
        found[:] = reply.events
        return len(found) >= count

    await eventually(recorded)
    return {e.event_type: list(e.actors) for e in found}


async def test_the_loop_is_attributed_to_the_anonymous_client_and_each_service(
    suite: Suite,
) -> None:
    kind = unique_type("upgrade")
    bpmn = linear(start(), service("move", "lifecycle.set_stage", stage="Revenue"), end())
    await create_trigger(suite.triggers, kind, await deploy(suite.workflows, bpmn))
    user_id = await new_user(suite.users)
    await track(suite.triggers, event(user_id, kind))
    by_workflows = ["anonymous", "service:triggers", "service:workflows"]
    assert await chains_once_recorded(suite, user_id, 6) == {
        "user.created": ["anonymous"],
        f"tracked.{kind}": ["anonymous"],
        "trigger.fired": ["anonymous", "service:triggers"],
        "execution.started": ["anonymous", "service:triggers"],
        "user.stage_changed": by_workflows,
        "execution.completed": by_workflows,
    }
    history = await suite.users.GetLifecycleHistory(
        users_pb2.GetLifecycleHistoryRequest(user_id=user_id)
    )
    assert history.transitions[0].to_stage == stage_pb2.LIFECYCLE_STAGE_REVENUE
    assert struct_to_dict(history.transitions[0].metadata)["actors"] == by_workflows


async def test_what_a_relayed_change_causes_is_done_on_behalf_of_its_caller(
    suite: Suite,
) -> None:
    """The users service tells the triggers service of a stage change through
    its outbox, on behalf of whoever made the change: the firing it causes is
    theirs, through the users and triggers services."""
    run = uuid.uuid4().hex
    trigger = await create_trigger(
        suite.triggers,
        "user.stage_changed",
        await deploy(suite.workflows, INSTANT),
        {"v": 1, "attr": "run", "op": "eq", "value": run},
    )
    try:
        user_id = await new_user(suite.users, run=run)
        await suite.users.TransitionStage(
            users_pb2.TransitionStageRequest(
                user_id=user_id, to_stage=stage_pb2.LIFECYCLE_STAGE_ACTIVATION
            )
        )
        chains = await chains_once_recorded(suite, user_id, 5)
    finally:
        await suite.triggers.DeleteTrigger(pb.DeleteTriggerRequest(trigger_id=trigger.id))
    relayed = ["anonymous", "service:users", "service:triggers"]
    assert chains == {
        "user.created": ["anonymous"],
        "user.stage_changed": ["anonymous"],
        "trigger.fired": relayed,
        "execution.started": relayed,
        "execution.completed": relayed,
    }
