"""One item that cannot be written fails alone: every other item of its batch,
call or group commit is written and answered as if it had come alone.

The failing item is either a value no service can store (U+0000), refused
before any write, or a value the database itself refuses: a trigger the test
installs fails, with an SQLSTATE of its choosing, every row whose JSON has
the key "poison" (the database's own refusal, as a CHECK or an encoding
error would give)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.triggers.v1 import triggers_pb2 as tr
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as wf
from runtime.structs import dict_to_struct, timestamp
from tests.edges.conftest import Edges
from tests.support import rpc_error, violated_fields
from tests.workflows.bpmn_docs import end, linear, start

# invalid_parameter_value: a data exception, the class a value of a request causes.
REFUSED_VALUE = "22023"
# raise_exception: not about a value; the item still fails alone, as INTERNAL.
OTHER_FAILURE = "P0001"


@asynccontextmanager
async def poisoned(
    admin: asyncpg.Connection, table: str, column: str, state: str = REFUSED_VALUE
) -> AsyncIterator[None]:
    """Rows of `table` whose JSON `column` has the key "poison" fail to be written."""
    function = f"{table.split('.', maxsplit=1)[0]}.poison_{secrets.token_hex(4)}"
    await admin.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF NEW.{column} ? 'poison' THEN"
        f" RAISE EXCEPTION 'poisoned row' USING ERRCODE = '{state}'; END IF;"
        " RETURN NEW; END $$"
    )
    trigger = function.split(".")[1]
    await admin.execute(
        f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table}"
        f" FOR EACH ROW EXECUTE FUNCTION {function}()"
    )
    try:
        yield
    finally:
        await admin.execute(f"DROP TRIGGER {trigger} ON {table}")
        await admin.execute(f"DROP FUNCTION {function}()")


async def new_user(edges: Edges) -> str:
    reply = await edges.users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(email=f"edge-{uuid.uuid4().hex[:12]}@example.com")
        )
    )
    return reply.user.id


def event(user_id: str, **data: Any) -> tr.Event:
    return tr.Event(
        user_id=user_id,
        event_type="edge.test",
        data=dict_to_struct(data),
        message_id=uuid.uuid4().hex,
    )


async def stored_events(admin: asyncpg.Connection, events: list[tr.Event]) -> set[str]:
    rows = await admin.fetch(
        "SELECT message_id FROM triggers.events WHERE message_id = ANY($1::text[])",
        [e.message_id for e in events],
    )
    return {row["message_id"] for row in rows}


# ------------------------------------------------------------ triggers


async def test_a_nul_among_concurrent_track_event_calls_fails_alone(edges: Edges) -> None:
    user = await new_user(edges)
    valid = [event(user, n=n) for n in range(200)]
    bad = event(user, text="a\x00b")
    calls = [edges.triggers.TrackEvent(tr.TrackEventRequest(event=e)) for e in valid]
    results = await asyncio.gather(
        *calls, edges.triggers.TrackEvent(tr.TrackEventRequest(event=bad)), return_exceptions=True
    )
    *answers, refused = results
    assert all(isinstance(a, tr.TrackEventResponse) for a in answers), [
        a for a in answers if not isinstance(a, tr.TrackEventResponse)
    ][:3]
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused) == ["event.data.text"]


async def test_a_refused_event_among_concurrent_calls_fails_alone(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    user = await new_user(edges)
    valid = [event(user, n=n) for n in range(200)]
    bad = event(user, poison=True)
    async with poisoned(edges_admin, "triggers.events", "data"):
        results = await asyncio.gather(
            *(edges.triggers.TrackEvent(tr.TrackEventRequest(event=e)) for e in [*valid, bad]),
            return_exceptions=True,
        )
    *answers, refused = results
    assert all(isinstance(a, tr.TrackEventResponse) for a in answers)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused) == ["event.event"]
    assert "poisoned row" in (refused.details() or "")
    assert await stored_events(edges_admin, valid) == {e.message_id for e in valid}
    assert not await stored_events(edges_admin, [bad])


async def test_track_events_answers_each_event_alone(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    user = await new_user(edges)
    batch = [event(user, n=n) for n in range(100)]
    batch[10] = event(user, text="a\x00b")
    batch[40] = event(user, poison=True)
    batch[70] = event(user, poison=True, other=1)
    batch[90].event_time.seconds = 2**40
    async with poisoned(edges_admin, "triggers.events", "data"):
        reply = await edges.triggers.TrackEvents(tr.TrackEventsRequest(events=batch))
    assert reply.accepted_count == 96
    errors = {e.index: (e.field, e.reason) for e in reply.errors}
    assert errors == {
        10: ("data.text", "INVALID_EVENT"),
        40: ("event", "INVALID_EVENT"),
        70: ("event", "INVALID_EVENT"),
        90: ("event_time", "INVALID_EVENT"),
    }
    good = [e for n, e in enumerate(batch) if n not in errors]
    assert await stored_events(edges_admin, good) == {e.message_id for e in good}


async def test_an_event_failing_for_another_reason_fails_alone_as_internal(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    user = await new_user(edges)
    batch = [event(user, n=n) for n in range(20)]
    batch[3] = event(user, poison=True)
    async with poisoned(edges_admin, "triggers.events", "data", OTHER_FAILURE):
        reply = await edges.triggers.TrackEvents(tr.TrackEventsRequest(events=batch))
        alone = await rpc_error(edges.triggers.TrackEvent(tr.TrackEventRequest(event=batch[3])))
    assert reply.accepted_count == 19
    assert [(e.index, e.reason) for e in reply.errors] == [(3, "INTERNAL")]
    assert alone.code() == grpc.StatusCode.INTERNAL
    assert "poisoned" not in (alone.details() or ""), "an internal error tells nothing of itself"


# ------------------------------------------------------------ users


async def test_import_users_writes_every_row_but_the_refused_ones(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    tag = uuid.uuid4().hex[:8]
    rows = [users_pb2.UserImport(email=f"imp-{tag}-{n}@example.com") for n in range(50)]
    rows[5].attributes.update({"note": "a\x00b"})
    rows[20].attributes.update({"poison": True})
    rows[30].email = f"imp-{tag}-\x00@example.com"

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        yield users_pb2.ImportUsersRequest(users=rows[:25])
        yield users_pb2.ImportUsersRequest(users=rows[25:])

    async with poisoned(edges_admin, "users.users", "attributes"):
        reply = await edges.users.ImportUsers(stream())
    assert (reply.created_count, reply.failed_count) == (47, 3)
    assert {(e.index, e.field) for e in reply.errors} == {
        (5, "attributes.note"),
        (20, "row"),
        (30, "email"),
    }
    stored = await edges_admin.fetchval(
        "SELECT count(*) FROM users.users WHERE email LIKE $1", f"imp-{tag}-%"
    )
    assert stored == 47


# ------------------------------------------------------------ workflows


async def deploy(edges: Edges, bpmn: str) -> str:
    created = await edges.workflows.CreateWorkflow(
        wf.CreateWorkflowRequest(
            workflow=wf.Workflow(name=f"edge-{uuid.uuid4().hex[:6]}", bpmn_xml=bpmn)
        )
    )
    await edges.workflows.ActivateWorkflow(
        wf.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return created.workflow.id


async def test_a_refused_start_among_concurrent_starts_fails_alone(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    workflow = await deploy(edges, linear(start(), end()))

    def request(**variables: Any) -> wf.StartExecutionRequest:
        return wf.StartExecutionRequest(
            workflow_id=workflow, user_id=str(uuid.uuid4()), variables=dict_to_struct(variables)
        )

    valid = [request(n=n) for n in range(100)]
    async with poisoned(edges_admin, "workflows.workflow_executions", "variables"):
        results = await asyncio.gather(
            *(edges.workflows.StartExecution(r) for r in [*valid, request(poison=True)]),
            return_exceptions=True,
        )
    *started, refused = results
    assert all(isinstance(s, wf.StartExecutionResponse) for s in started)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "poisoned row" in (refused.details() or "")


async def test_start_executions_answers_each_start_alone(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    """A start the database refuses is INVALID_ARGUMENT in its result, one that
    fails for another reason INTERNAL with a trace id; the others start."""
    workflow = await deploy(edges, linear(start(), end()))

    def request(**variables: Any) -> wf.StartExecutionRequest:
        return wf.StartExecutionRequest(
            workflow_id=workflow, user_id=str(uuid.uuid4()), variables=dict_to_struct(variables)
        )

    for state, code in ((REFUSED_VALUE, "INVALID_ARGUMENT"), (OTHER_FAILURE, "INTERNAL")):
        starts = [request(n=n) for n in range(60)]
        starts[25] = request(poison=True)
        async with poisoned(edges_admin, "workflows.workflow_executions", "variables", state):
            reply = await edges.workflows.StartExecutions(wf.StartExecutionsRequest(starts=starts))
        failed = [(n, r.error) for n, r in enumerate(reply.results) if r.HasField("error")]
        assert [(n, e.code) for n, e in failed] == [(25, code)]
        message = failed[0][1].message
        if code == "INTERNAL":
            assert "trace id" in message and "poisoned" not in message
        else:
            assert "poisoned row" in message
        started = [r.execution.user_id for r in reply.results if not r.HasField("error")]
        assert started == [s.user_id for n, s in enumerate(starts) if n != 25]
        stored = await edges_admin.fetchval(
            "SELECT count(*) FROM workflows.workflow_executions WHERE user_id = ANY($1::uuid[])",
            [s.user_id for s in starts],
        )
        assert stored == 59


async def test_publish_messages_answers_each_message_alone(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    """Buffered messages (nobody waits) are written to the message buffer."""

    def message(**variables: Any) -> wf.PublishMessageRequest:
        return wf.PublishMessageRequest(
            name="edge.nobody.waits",
            correlation_key=str(uuid.uuid4()),
            variables=dict_to_struct(variables),
            time_to_live=duration_pb2.Duration(seconds=600),
        )

    batch = [message(n=n) for n in range(30)]
    batch[4] = message(poison=True)
    batch[9] = message(text="a\x00b")
    batch[12].time_to_live.seconds = 2**62
    async with poisoned(edges_admin, "workflows.messages", "variables"):
        reply = await edges.workflows.PublishMessages(wf.PublishMessagesRequest(messages=batch))
        alone = await rpc_error(edges.workflows.PublishMessage(batch[4]))
    errors = {
        n: (r.error.field, r.error.reason)
        for n, r in enumerate(reply.results)
        if r.HasField("error")
    }
    assert errors == {
        4: ("message", "INVALID_MESSAGE"),
        9: ("variables.text", "INVALID_MESSAGE"),
        12: ("time_to_live", "INVALID_MESSAGE"),
    }
    assert all(r.buffered for n, r in enumerate(reply.results) if n not in errors)
    assert alone.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(alone) == ["message"]


# ------------------------------------------------------------ metrics


async def test_record_events_stores_every_event_but_the_refused_ones(
    edges: Edges, edges_admin: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)

    def lifecycle_event(**data: Any) -> metrics_pb2.LifecycleEvent:
        return metrics_pb2.LifecycleEvent(
            event_id=str(uuid.uuid4()),
            event_type="tracked.edge",
            user_id=str(uuid.uuid4()),
            data=dict_to_struct(data),
            event_time=timestamp(now),
            producer="edges",
        )

    batch = [lifecycle_event(n=n) for n in range(40)]
    batch[7] = lifecycle_event(poison=True)
    batch[8] = lifecycle_event(text="a\x00b")
    async with poisoned(edges_admin, "metrics.lifecycle_events", "event_data"):
        error = await rpc_error(
            edges.metrics.RecordEvents(metrics_pb2.RecordEventsRequest(events=batch))
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error)[:2] == ["events[7]", "events[8].data.text"]
    stored = await edges_admin.fetchval(
        "SELECT count(*) FROM metrics.lifecycle_events WHERE event_id = ANY($1::uuid[])",
        [e.event_id for e in batch],
    )
    assert stored == 38
