"""The whole path: events start workflows and move them on, a workflows outage
loses nothing, and one TrackEvent is one trace across the services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
from opentelemetry.trace import SpanKind

from lifecycle.common.v1 import stage_pb2
from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2
from tests.support import SPANS, eventually
from tests.triggers.conftest import (
    INSTANT,
    ONBOARDING,
    Suite,
    create_trigger,
    deploy,
    event,
    new_user,
    settled,
    track,
    unique_type,
)
from tests.workflows.bpmn_docs import definitions, emit, end, flow, start, xor

BURST = 1000


async def execution_status(suite: Suite, execution_id: str) -> int:
    reply = await suite.workflows.GetExecution(
        workflows_pb2.GetExecutionRequest(execution_id=execution_id)
    )
    return int(reply.execution.status)


async def test_signup_starts_onboarding_and_first_login_activates_the_user(suite: Suite) -> None:
    signup, first_login = unique_type("signup"), unique_type("first_login")
    bpmn = ONBOARDING.replace('name="first_login"', f'name="{first_login}"')
    onboarding = await deploy(suite.workflows, bpmn)
    trigger = await create_trigger(
        suite.triggers, signup, onboarding, {"v": 1, "attr": "plan", "op": "eq", "value": "pro"}
    )
    pro, free = await new_user(suite.users, plan="pro"), await new_user(suite.users, plan="free")
    await track(suite.triggers, event(pro, signup), event(free, signup))
    found = await settled(suite.triggers, trigger.id, 2)
    [started] = [e for e in found if e.condition_met]
    assert started.user_id == pro
    assert all(not e.workflow_execution_id for e in found if e.user_id == free)
    waiting = await execution_status(suite, started.workflow_execution_id)
    assert waiting == workflows_pb2.EXECUTION_STATUS_RUNNING

    await track(suite.triggers, event(pro, first_login))

    async def completed() -> bool:
        status = await execution_status(suite, started.workflow_execution_id)
        return status == workflows_pb2.EXECUTION_STATUS_COMPLETED

    await eventually(completed)
    user = await suite.users.GetUser(users_pb2.GetUserRequest(user_id=pro))
    assert user.user.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_ACTIVATION


async def _import_users(suite: Suite, admin: asyncpg.Connection, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    emails = [f"burst-{run}-{n}@example.com" for n in range(count)]

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(
            users=[users_pb2.UserImport(email=email) for email in emails]
        )

    reply = await suite.users.ImportUsers(stream())
    assert reply.created_count == count
    rows = await admin.fetch("SELECT id::text FROM users.users WHERE email = ANY($1)", emails)
    return [row["id"] for row in rows]


async def test_the_starter_rests_while_the_workflows_service_is_down(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    """A start that found the workflows service down makes the starter rest,
    backing off, rather than try again on every ingest that wakes it."""
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type("rest")
    trigger = await create_trigger(suite.triggers, kind, workflow)
    first, second = await _import_users(suite, admin, 2)

    async def start_of(user: str) -> asyncpg.Record:
        row = await admin.fetchrow(
            "SELECT attempts, last_error FROM triggers.pending_starts"
            " WHERE trigger_id = $1 AND user_id = $2",
            uuid.UUID(trigger.id),
            uuid.UUID(user),
        )
        assert row is not None
        return row

    await suite.stop_workflows()
    try:
        await track(suite.triggers, event(first, kind))

        async def first_failed() -> bool:
            return (await start_of(first))["last_error"] is not None

        await eventually(first_failed)
        await track(suite.triggers, event(second, kind))
        await asyncio.sleep(0.15)
        assert (await start_of(second))["attempts"] == 0, "the starter tried again at once"
    finally:
        await suite.start_workflows()
    found = await settled(suite.triggers, trigger.id, 2)
    assert all(e.workflow_execution_id for e in found)


async def test_a_workflows_outage_during_a_burst_loses_and_repeats_no_start(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type("burst")
    trigger = await create_trigger(suite.triggers, kind, workflow)
    users = await _import_users(suite, admin, BURST)
    await suite.stop_workflows()
    try:
        events = [event(user, kind) for user in users]
        batches, unary = await asyncio.gather(
            asyncio.gather(
                *(track(suite.triggers, *events[i : i + 100]) for i in range(0, BURST, 100))
            ),
            asyncio.gather(
                *(
                    suite.triggers.TrackEvent(pb.TrackEventRequest(event=given))
                    for given in events[:50]
                )
            ),
        )
        stored = sum(r.accepted_count for r in batches) + sum(not r.duplicate for r in unary)
        repeated = sum(r.duplicate_count for r in batches) + sum(r.duplicate for r in unary)
        assert (stored, repeated) == (BURST, 50)
        waiting = await admin.fetchval(
            "SELECT count(*) FROM triggers.pending_starts WHERE trigger_id = $1",
            uuid.UUID(trigger.id),
        )
        assert waiting == BURST
        # Kept to send again later, as if the answers to these starts had been lost.
        await admin.execute(
            "CREATE TEMP TABLE lost AS SELECT * FROM triggers.pending_starts"
            " WHERE trigger_id = $1 LIMIT 20",
            uuid.UUID(trigger.id),
        )
    finally:
        await suite.start_workflows()
    found = await settled(suite.triggers, trigger.id, BURST)
    assert {e.user_id for e in found} == set(users)
    assert not [e for e in found if e.skip_reason]
    assert len({e.workflow_execution_id for e in found}) == BURST
    await admin.execute(
        "INSERT INTO triggers.pending_starts SELECT * FROM lost;"
        " UPDATE triggers.pending_starts SET available_at = now()"
    )

    async def resent() -> bool:
        left = await admin.fetchval(
            "SELECT count(*) FROM triggers.pending_starts WHERE trigger_id = $1",
            uuid.UUID(trigger.id),
        )
        return bool(left == 0)

    await eventually(resent)
    again = await settled(suite.triggers, trigger.id, BURST)
    assert {(e.id, e.workflow_execution_id) for e in again} == {
        (e.id, e.workflow_execution_id) for e in found
    }

    async def all_published() -> bool:
        published = await admin.fetchval(
            "SELECT count(*) FROM workflows.messages WHERE name = $1", kind
        )
        return bool(published == BURST)

    await eventually(all_published, seconds=30)
    rows = await admin.fetch(
        "SELECT user_id, count(*) AS runs FROM workflows.workflow_executions"
        " WHERE workflow_id = $1 GROUP BY user_id",
        uuid.UUID(workflow),
    )
    assert {str(r["user_id"]) for r in rows} == set(users)
    assert {r["runs"] for r in rows} == {1}


# Reads the user in an expression, so the workflows service asks the users
# service (GetUser) while it starts the execution.
READS_USER = definitions(
    start(),
    xor("plan", default="other"),
    emit("pro_path", event="pro_path"),
    end(),
    end("done"),
    flow("f1", "start", "plan"),
    flow("pro", "plan", "pro_path", 'user.attributes.plan == "pro"'),
    flow("other", "plan", "done"),
    flow("f2", "pro_path", "end"),
)


async def test_one_track_event_is_one_trace_through_triggers_workflows_and_users(
    suite: Suite,
) -> None:
    workflow = await deploy(suite.workflows, READS_USER)
    kind = unique_type("traced")
    trigger = await create_trigger(suite.triggers, kind, workflow)
    user = await new_user(suite.users, plan="pro")
    SPANS.clear()
    await suite.triggers.TrackEvent(pb.TrackEventRequest(event=event(user, kind)))
    [fired] = await settled(suite.triggers, trigger.id, 1)
    assert fired.workflow_execution_id
    servers = [s for s in SPANS.get_finished_spans() if s.kind == SpanKind.SERVER]
    by_id = {s.context.span_id: s for s in SPANS.get_finished_spans()}
    [tracked] = [s for s in servers if s.name.endswith("TriggerService/TrackEvent")]
    trace = [s for s in servers if s.context.trace_id == tracked.context.trace_id]
    names = {s.name.rsplit(".", 1)[-1] for s in trace}
    assert {
        "TriggerService/TrackEvent",
        "UserService/BatchGetUserProfiles",
        "WorkflowService/StartExecutions",
        "UserService/GetUser",
    } <= names
    [started] = [s for s in trace if s.name.endswith("WorkflowService/StartExecutions")]
    [read] = [s for s in trace if s.name.endswith("UserService/GetUser")]
    ancestors = []
    parent = read.parent
    while parent is not None and parent.span_id in by_id:
        ancestors.append(by_id[parent.span_id])
        parent = by_id[parent.span_id].parent
    assert started in ancestors and tracked in ancestors
