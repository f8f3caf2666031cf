"""OperationsService, which every service serves about itself on its own port:
what waits in its outbox (a callee that is down), its dead letters sent again
and delivered once the callee is up, the calls waiting in a service's own
queues, its refusals, and its permissions with authentication on."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.operations.v1 import operations_pb2 as pb
from lifecycle.operations.v1 import operations_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.lifecycle_events import RECORD_EVENTS
from runtime.operations import MAX_ERROR_CHARS
from runtime.structs import timestamp
from suite.keys import local_auth
from suite.registry import DEFINITIONS
from tests.support import (
    ScratchDatabase,
    error_info,
    eventually,
    free_port,
    rpc_error,
    running,
    service_env,
    starts_waiting_for_workflows,
    whole_suite,
)

if TYPE_CHECKING:
    from lifecycle.operations.v1.operations_pb2_grpc import OperationsServiceAsyncStub
else:
    OperationsServiceAsyncStub = Any

pytestmark = pytest.mark.users

START_EXECUTION = "workflows.start_execution"


@dataclass(frozen=True)
class HalfSuite:
    """The users and triggers services, alone: the others' ports are reserved,
    and nothing listens there until a test starts one."""

    env: dict[str, str]
    admin_url: str
    channels: dict[str, grpc.aio.Channel]

    def operations(self, service: str) -> OperationsServiceAsyncStub:
        stub: OperationsServiceAsyncStub = operations_pb2_grpc.OperationsServiceStub(
            self.channels[service]
        )
        return stub


@pytest.fixture(scope="module")
async def half_suite(own_database: ScratchDatabase) -> AsyncIterator[HalfSuite]:
    env = service_env(
        own_database, {name: free_port() for name in DEFINITIONS}, LIFECYCLE_LOG_LEVEL="ERROR"
    )
    async with contextlib.AsyncExitStack() as stack:
        channels = {}
        for name in ("users", "triggers"):
            host = await stack.enter_async_context(running(name, env))
            channels[name] = await stack.enter_async_context(
                grpc.aio.insecure_channel(host.address)
            )
        yield HalfSuite(env, own_database.admin_url, channels)


async def topic_of(operations: OperationsServiceAsyncStub, topic: str) -> pb.OutboxTopic:
    reply = await operations.GetOutbox(pb.GetOutboxRequest())
    (found,) = [t for t in reply.topics if t.topic == topic]
    return found


async def test_a_message_waiting_for_a_callee_that_is_down_shows_with_its_age_and_error(
    half_suite: HalfSuite,
) -> None:
    users = users_pb2_grpc.UserServiceStub(half_suite.channels["users"])
    await users.CreateUser(users_pb2.CreateUserRequest(user=users_pb2.User(email="a@example.com")))
    operations = half_suite.operations("users")

    async def failed() -> bool:
        # An attempt counts when the relay claims the message, its error once it failed.
        return bool((await topic_of(operations, RECORD_EVENTS)).last_error)

    await eventually(failed)
    reply = await operations.GetOutbox(pb.GetOutboxRequest())
    assert reply.service == "users"
    (waiting,) = [t for t in reply.topics if t.topic == RECORD_EVENTS]
    assert waiting.callee == "metrics"
    assert waiting.pending >= 1
    assert waiting.attempts >= 1
    assert waiting.last_error.startswith("UNAVAILABLE: ")
    age = waiting.oldest_pending_age.ToTimedelta()
    assert timedelta() < age < timedelta(seconds=60)
    waited = reply.read_time.ToDatetime() - waiting.oldest_pending_time.ToDatetime()
    assert abs(waited - age) < timedelta(milliseconds=1)
    assert waiting.dead_letters == 0


async def bury(admin_url: str, user_id: str, error: str) -> str:
    """A dead letter of the users service: a RecordEvents call the metrics
    service refused, holding one event; its id."""
    event_id = str(uuid.uuid4())
    request = metrics_pb2.RecordEventsRequest(
        events=[
            metrics_pb2.LifecycleEvent(
                event_id=event_id,
                event_type="user.created",
                user_id=user_id,
                lifecycle_stage=stage_pb2.LIFECYCLE_STAGE_ACQUISITION,
                producer="users",
                event_time=timestamp(await _now(admin_url)),
            )
        ]
    )
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(
            "INSERT INTO users.outbox_dead_letters"
            " (id, topic, payload, created_at, attempts, last_error)"
            " VALUES (-1, $1, $2, now() - interval '1 hour', 10, $3)",
            RECORD_EVENTS,
            request.SerializeToString(),
            error,
        )
    finally:
        await conn.close()
    return event_id


async def _now(admin_url: str) -> Any:
    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


async def test_a_dead_letter_is_sent_again_and_delivered_once_the_callee_is_up(
    half_suite: HalfSuite,
) -> None:
    operations = half_suite.operations("users")
    user_id = str(uuid.uuid4())
    long_error = "FAILED_PRECONDITION: <script>x</script> " + "why " * 1000
    event_id = await bury(half_suite.admin_url, user_id, long_error)
    dead = await topic_of(operations, RECORD_EVENTS)
    assert dead.dead_letters == 1
    # Cut short, so that the reply of every topic stays small.
    assert len(dead.dead_letter_error) == MAX_ERROR_CHARS
    assert dead.dead_letter_error.startswith("FAILED_PRECONDITION: <script>x</script> why")
    assert dead.dead_letter_error.endswith("…")

    retried = await operations.RetryDeadLetters(pb.RetryDeadLettersRequest(topic=RECORD_EVENTS))
    assert retried.retried == 1
    again = await topic_of(operations, RECORD_EVENTS)
    assert (again.dead_letters, again.dead_letter_error) == (0, "")
    assert again.pending >= 1
    # The moved letter keeps when it was written.
    assert again.oldest_pending_age.ToTimedelta() >= timedelta(hours=1)

    async with running("metrics", half_suite.env):

        async def delivered() -> bool:
            return (await topic_of(operations, RECORD_EVENTS)).pending == 0

        await eventually(delivered, seconds=30)
        address = half_suite.env["LIFECYCLE_METRICS_ADDRESS"]
        async with grpc.aio.insecure_channel(address) as channel:
            events = await metrics_pb2_grpc.MetricsServiceStub(channel).ListEvents(
                metrics_pb2.ListEventsRequest(user_id=user_id)
            )
    assert [event.event_id for event in events.events] == [event_id]
    nothing = await operations.RetryDeadLetters(pb.RetryDeadLettersRequest())
    assert nothing.retried == 0


async def test_a_topic_the_service_does_not_send_is_not_found(half_suite: HalfSuite) -> None:
    operations = half_suite.operations("users")
    error = await rpc_error(operations.RetryDeadLetters(pb.RetryDeadLettersRequest(topic="x.y")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "topic" in (error.details() or "")
    info = error_info(error)
    assert (info.reason, dict(info.metadata)) == ("TOPIC_NOT_FOUND", {"topic": "x.y"})
    # However long the topic asked for, the refusal stays small.
    long = await rpc_error(
        operations.RetryDeadLetters(pb.RetryDeadLettersRequest(topic="t" * 100_000))
    )
    assert long.code() == grpc.StatusCode.NOT_FOUND
    assert len(long.details() or "") <= 600
    # The triggers service does not send users' topics either: each answers for itself.
    triggers = half_suite.operations("triggers")
    error = await rpc_error(
        triggers.RetryDeadLetters(pb.RetryDeadLettersRequest(topic="segments.reevaluate_users"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_the_calls_waiting_in_a_services_own_queue_show_beside_its_outbox(
    half_suite: HalfSuite,
) -> None:
    """The triggers' workflow starts, waiting while the workflows service is down."""
    await starts_waiting_for_workflows(half_suite.admin_url, age_minutes=5)
    reply = await half_suite.operations("triggers").GetOutbox(pb.GetOutboxRequest())
    assert reply.service == "triggers"
    (starts,) = [w for w in reply.elsewhere if w.topic == START_EXECUTION]
    assert (starts.kind, starts.calls) == ("pending", 2)
    assert starts.oldest_age.ToTimedelta() >= timedelta(minutes=5)
    assert starts.last_error.startswith("UNAVAILABLE")
    # Its outbox's topics are listed too, empty or not.
    assert {t.topic for t in reply.topics} >= set(DEFINITIONS["triggers"].destinations)


async def test_every_service_answers_about_its_own_outbox(
    own_database: ScratchDatabase,
) -> None:
    env = service_env(
        own_database, {name: free_port() for name in DEFINITIONS}, LIFECYCLE_LOG_LEVEL="ERROR"
    )
    async with whole_suite(env) as channels:
        for name, definition in DEFINITIONS.items():
            stub = operations_pb2_grpc.OperationsServiceStub(channels[name])
            reply = await stub.GetOutbox(pb.GetOutboxRequest(), timeout=5)
            assert reply.service == name
            callees = {t.topic: t.callee for t in reply.topics if t.callee}
            assert callees == {
                topic: destination.service for topic, destination in definition.destinations.items()
            }, name
            retried = await stub.RetryDeadLetters(pb.RetryDeadLettersRequest(), timeout=5)
            assert retried.retried == 0


async def test_with_authentication_on_each_rpc_needs_its_permission(
    own_database: ScratchDatabase, tmp_path: Path
) -> None:
    auth = local_auth(tmp_path)
    env = service_env(
        own_database,
        {name: free_port() for name in DEFINITIONS},
        LIFECYCLE_LOG_LEVEL="ERROR",
        **auth.environment(),
    )

    def bearer(*permissions: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {auth.token('olivia', list(permissions), 600)}"),)

    async with (
        running("users", env) as host,
        grpc.aio.insecure_channel(host.address) as channel,
    ):
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        refusals: list[tuple[Awaitable[Any], str]] = [
            (stub.GetOutbox(pb.GetOutboxRequest(), metadata=bearer("users:*")), "operations:read"),
            (
                stub.RetryDeadLetters(
                    pb.RetryDeadLettersRequest(), metadata=bearer("operations:read")
                ),
                "operations:write",
            ),
        ]
        for call, permission in refusals:
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert dict(error_info(error).metadata) == {"permission": permission}
        unauthenticated = await rpc_error(stub.GetOutbox(pb.GetOutboxRequest()))
        assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
        read = await stub.GetOutbox(pb.GetOutboxRequest(), metadata=bearer("operations:read"))
        assert read.service == "users"
        retried = await stub.RetryDeadLetters(
            pb.RetryDeadLettersRequest(), metadata=bearer("operations:write")
        )
        assert retried.retried == 0
