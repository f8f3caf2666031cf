"""Who did what, with authentication on (the five services of test_auth, on a
database of this module's own): every change is attributed to the token's
subject and to the services that acted on its behalf, in the lifecycle events,
the users' history and the erase records, and ListEvents finds an actor's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import asyncpg

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime.identity import ON_BEHALF_OF
from runtime.structs import struct_to_dict
from tests import test_auth
from tests.support import ScratchDatabase, eventually
from tests.test_auth import Secured, bearer
from tests.workflows.bpmn_docs import end, linear, service, start

INSTANT = linear(start(), end())

# The fixture of test_auth, started again for this module.
secured = test_auth.secured

# Who creates users, workflows and triggers.
ADMIN = "admin"
# TrackEvent by alice -> trigger -> workflow started by triggers on her behalf
# -> its built-in task moves the user, by workflows on behalf of both.
ALICE = ["alice"]
TRIGGERS_FOR_ALICE = ["alice", "service:triggers"]
WORKFLOWS_FOR_ALICE = ["alice", "service:triggers", "service:workflows"]


async def new_user(secured: Secured, subject: str) -> str:
    created = await secured.users().CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com")),
        metadata=bearer(secured.token("users:write", subject=subject)),
    )
    return str(created.user.id)


async def deployed(secured: Secured, bpmn: str) -> str:
    """An active workflow of `bpmn`, by the admin; returns its id."""
    admin = bearer(secured.token("*", subject=ADMIN))
    workflows = secured.stub("workflows")
    created = await workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(name="move", bpmn_xml=bpmn)
        ),
        metadata=admin,
    )
    await workflows.ActivateWorkflow(
        workflows_pb2.ActivateWorkflowRequest(workflow_id=created.workflow.id), metadata=admin
    )
    return str(created.workflow.id)


async def trigger_of(secured: Secured, bpmn: str) -> str:
    """A trigger on an event type of its own, starting a workflow of `bpmn`;
    returns the event type."""
    workflow_id = await deployed(secured, bpmn)
    kind = f"upgrade_{uuid.uuid4().hex[:8]}"
    await secured.stub("triggers").CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(name="upgrade", event_type=kind, workflow_id=workflow_id)
        ),
        metadata=bearer(secured.token("*", subject=ADMIN)),
    )
    return kind


async def track(secured: Secured, subject: str, user_id: str, kind: str) -> None:
    await secured.stub("triggers").TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(user_id=user_id, event_type=kind, message_id=uuid.uuid4().hex)
        ),
        metadata=bearer(secured.token("events:track", subject=subject)),
    )


async def chains_once_recorded(secured: Secured, user_id: str, count: int) -> dict[str, list[str]]:
    """The actors of each type of the user's events, once `count` are recorded."""
    found: list[metrics_pb2.LifecycleEvent] = []

    async def recorded() -> bool:
        found[:] = await events_of(secured, user_id=user_id)
        return len(found) >= count

    await eventually(recorded)
    return chains(found)


async def events_of(
    secured: Secured, *, user_id: str = "", actor: str = ""
) -> list[metrics_pb2.LifecycleEvent]:
    reply = await secured.stub("metrics").ListEvents(
        metrics_pb2.ListEventsRequest(page_size=1000, user_id=user_id, actor=actor),
        metadata=bearer(secured.token("metrics:read", subject="auditor")),
    )
    return list(reply.events)


async def recorded_for(
    secured: Secured, actor: str, count: int
) -> Counter[tuple[str, str, tuple[str, ...]]]:
    """(user, type, actors) of the events `actor` had a part in, once there are `count`."""
    found: Counter[tuple[str, str, tuple[str, ...]]] = Counter()

    async def recorded() -> bool:
        events = await events_of(secured, actor=actor)
        found.clear()
        found.update((e.user_id, e.event_type, tuple(e.actors)) for e in events)
        return found.total() >= count

    await eventually(recorded)
    return found


def chains(events: list[metrics_pb2.LifecycleEvent]) -> dict[str, list[str]]:
    return {event.event_type: list(event.actors) for event in events}


async def test_a_change_made_on_a_callers_behalf_is_attributed_to_the_whole_chain(
    secured: Secured,
) -> None:
    user_id = await new_user(secured, ADMIN)
    kind = await trigger_of(
        secured, linear(start(), service("move", "lifecycle.set_stage", stage="Revenue"), end())
    )
    await track(secured, "alice", user_id, kind)
    expected = {
        "user.created": [ADMIN],
        f"tracked.{kind}": ALICE,
        "trigger.fired": TRIGGERS_FOR_ALICE,
        "execution.started": TRIGGERS_FOR_ALICE,
        "user.stage_changed": WORKFLOWS_FOR_ALICE,
        "execution.completed": WORKFLOWS_FOR_ALICE,
    }
    assert await chains_once_recorded(secured, user_id, len(expected)) == expected
    history = await secured.users().GetLifecycleHistory(
        users_pb2.GetLifecycleHistoryRequest(user_id=user_id),
        metadata=bearer(secured.token("users:read")),
    )
    moved, created = history.transitions
    assert moved.to_stage == stage_pb2.LIFECYCLE_STAGE_REVENUE
    assert struct_to_dict(moved.metadata)["actors"] == WORKFLOWS_FOR_ALICE
    assert struct_to_dict(created.metadata) == {"source": "api", "actors": [ADMIN]}
    # Alice's part: every event of her chain, and not the user's creation.
    alices = await events_of(secured, user_id=user_id, actor="alice")
    assert chains(alices) == {k: v for k, v in expected.items() if "alice" in v}
    workflows = await events_of(secured, user_id=user_id, actor="service:workflows")
    assert {event.event_type for event in workflows} == {
        "user.stage_changed",
        "execution.completed",
    }
    assert chains(await events_of(secured, user_id=user_id, actor=ADMIN)) == {
        "user.created": [ADMIN]
    }


async def test_a_workflow_a_message_starts_works_for_whoever_sent_the_message(
    secured: Secured,
) -> None:
    """The triggers service publishes each event to the workflows service (its
    outbox, on behalf of the event's caller); a workflow whose start event waits
    for that message starts for them, and its built-in task acts for them."""
    user_id = await new_user(secured, ADMIN)
    kind = f"referral_{uuid.uuid4().hex[:8]}"
    await deployed(
        secured,
        linear(
            start(message=kind), service("move", "lifecycle.set_stage", stage="Referral"), end()
        ),
    )
    await track(secured, "dora", user_id, kind)
    by_workflows = ["dora", "service:triggers", "service:workflows"]
    expected = {
        "user.created": [ADMIN],
        f"tracked.{kind}": ["dora"],
        "execution.started": ["dora", "service:triggers"],
        "user.stage_changed": by_workflows,
        "execution.completed": by_workflows,
    }
    assert await chains_once_recorded(secured, user_id, len(expected)) == expected


async def test_calls_written_together_keep_each_its_own_actors(secured: Secured) -> None:
    """TrackEvent calls arriving together are written in one batch, and the
    starts they cause are sent and started together too (group commits): each
    change is still its own caller's."""
    kind = await trigger_of(secured, INSTANT)
    subjects = [f"client-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    callers = [subject for subject in subjects for _ in range(5)]
    users = await asyncio.gather(*(new_user(secured, ADMIN) for _ in callers))
    tokens = {s: bearer(secured.token("events:track", subject=s)) for s in subjects}
    await asyncio.gather(
        *(
            secured.stub("triggers").TrackEvent(
                triggers_pb2.TrackEventRequest(
                    event=triggers_pb2.Event(
                        user_id=user_id, event_type=kind, message_id=uuid.uuid4().hex
                    )
                ),
                metadata=tokens[subject],
            )
            for subject, user_id in zip(callers, users, strict=True)
        )
    )
    for subject in subjects:
        mine = [
            user_id for caller, user_id in zip(callers, users, strict=True) if caller == subject
        ]
        expected = Counter(
            (user_id, event_type, chain)
            for user_id in mine
            for event_type, chain in (
                (f"tracked.{kind}", (subject,)),
                ("trigger.fired", (subject, "service:triggers")),
                ("execution.started", (subject, "service:triggers")),
                ("execution.completed", (subject, "service:triggers")),
            )
        )
        assert await recorded_for(secured, subject, expected.total()) == expected


async def test_an_erase_leaves_a_record_of_who_erased_whom_that_outlives_it(
    secured: Secured, own_database: ScratchDatabase
) -> None:
    user_id = await new_user(secured, ADMIN)
    bob = f"bob-{uuid.uuid4().hex[:6]}"
    await secured.users().DeleteUser(
        users_pb2.DeleteUserRequest(user_id=user_id),
        metadata=bearer(secured.token("users:erase", subject=bob)),
    )
    conn = await asyncpg.connect(own_database.admin_url)
    try:

        async def erased_everywhere() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM metrics.erased_users WHERE user_id = $1)",
                    uuid.UUID(user_id),
                )
            )

        await eventually(erased_everywhere)
        records = await conn.fetch(
            "SELECT * FROM users.user_erasures WHERE user_id = $1", uuid.UUID(user_id)
        )
        users_left = await conn.fetchval(
            "SELECT count(*) FROM users.users WHERE id = $1", uuid.UUID(user_id)
        )
    finally:
        await conn.close()
    assert users_left == 0
    [record] = records
    assert set(record.keys()) == {"user_id", "erased_at", "actors"}, "nothing else of the user"
    assert record["actors"] == [bob]
    [erased] = await events_of(secured, actor=bob)
    assert (erased.event_type, erased.user_id, list(erased.actors)) == ("user.erased", "", [bob])


async def test_a_client_cannot_claim_to_act_for_someone_else(secured: Secured) -> None:
    """Only a service's calls say whom they act for: a client's claim is ignored."""
    kind = f"claim_{uuid.uuid4().hex[:8]}"
    user_id = await new_user(secured, ADMIN)
    subject = f"mallory-{uuid.uuid4().hex[:6]}"
    await secured.stub("triggers").TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(user_id=user_id, event_type=kind, message_id=kind)
        ),
        metadata=(
            *bearer(secured.token("events:track", subject=subject)),
            (ON_BEHALF_OF, json.dumps(["bob"])),
        ),
    )
    found = await recorded_for(secured, subject, 1)
    assert found == Counter({(user_id, f"tracked.{kind}", (subject,)): 1})
