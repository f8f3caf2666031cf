"""The shared runtime's server behaviour, on a real users service: health that
follows the database, reflection that grpcurl can use for every RPC, graceful
shutdown under load, INTERNAL errors that leak nothing, and tracing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.config import service_role, with_user
from runtime.identity import acting_for, calling_as
from runtime.server import (
    LIVENESS,
    ServiceComponents,
    ServiceContext,
    ServiceDefinition,
    ServiceHost,
)
from runtime.telemetry import JsonFormatter
from suite.registry import DEFINITIONS
from tests.support import (
    SPANS,
    TRACER_PROVIDER,
    ScratchDatabase,
    TcpProxy,
    error_info,
    eventually,
    free_port,
    rpc_error,
    running,
    service_config,
    service_env,
)

pytestmark = pytest.mark.users

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_status(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


async def wait_for_status(
    address: str, expected: int, service: str = "", seconds: float = 10.0
) -> None:
    for _ in range(int(seconds * 10)):
        if await health_status(address, service) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health of {service!r} never became {expected}")


async def test_readiness_follows_the_database_and_liveness_does_not(
    database: ScratchDatabase,
) -> None:
    proxy = TcpProxy(database.admin_url)
    await proxy.start()
    role = service_role(database.admin_url, "users")
    url = with_user(f"postgresql://127.0.0.1:{proxy.port}/{database.name}", role)
    env = service_env(database, {"users": free_port()}, LIFECYCLE_USERS_DATABASE_URL=url)
    async with running("users", env) as host:
        await wait_for_status(host.address, SERVING)
        assert await health_status(host.address, "lifecycle.users.v1.UserService") == SERVING
        await proxy.stop()
        await wait_for_status(host.address, NOT_SERVING)
        assert await health_status(host.address, LIVENESS) == SERVING
        async with grpc.aio.insecure_channel(host.address) as channel:
            error = await rpc_error(
                users_pb2_grpc.UserServiceStub(channel).GetUser(
                    users_pb2.GetUserRequest(user_id=str(uuid.uuid4()))
                )
            )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        await proxy.start()
        await wait_for_status(host.address, SERVING)


def grpcurl(*args: str, data: str | None = None) -> str:
    command = [GRPCURL, "-plaintext", *([] if data is None else ["-d", data]), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_grpcurl_lists_and_calls_every_users_rpc_through_reflection(
    users_host: ServiceHost,
) -> None:
    address = users_host.address
    listed = await asyncio.to_thread(grpcurl, address, "list")
    assert set(listed.split()) == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "lifecycle.users.v1.UserService",
        "lifecycle.operations.v1.OperationsService",
    }
    methods = (
        await asyncio.to_thread(grpcurl, address, "list", "lifecycle.users.v1.UserService")
    ).split()
    assert len(methods) == 12

    def call(method: str, body: dict[str, object] | str) -> dict[str, object]:
        data = body if isinstance(body, str) else json.dumps(body)
        out = grpcurl(address, f"lifecycle.users.v1.UserService/{method}", data=data)
        return json.loads(out) if out.strip() else {}

    email = f"grpcurl-{uuid.uuid4().hex[:8]}@example.com"
    called = set()

    def exercise() -> None:
        user = call("CreateUser", {"user": {"email": email, "attributes": {"plan": "pro"}}})["user"]
        assert isinstance(user, dict)
        user_id = user["id"]
        called.add("CreateUser")
        assert call("GetUser", {"email": email})["user"]["id"] == user_id  # type: ignore[index]
        called.add("GetUser")
        call(
            "UpdateUser",
            {
                "user": {"id": user_id, "attributes": {"seats": 4}},
                "update_mask": {"paths": ["attributes"]},
            },
        )
        called.add("UpdateUser")
        moved = call(
            "TransitionStage", {"user_id": user_id, "to_stage": "LIFECYCLE_STAGE_ACTIVATION"}
        )
        assert moved["user"]["lifecycle_stage"] == "LIFECYCLE_STAGE_ACTIVATION"  # type: ignore[index]
        called.add("TransitionStage")
        history = call("GetLifecycleHistory", {"user_id": user_id})
        assert len(history["transitions"]) == 2  # type: ignore[arg-type]
        called.add("GetLifecycleHistory")
        assert call("ListUsers", {"page_size": 1})["users"]
        called.add("ListUsers")
        condition = {"v": 1, "attr": "seats", "op": "gte", "value": 4}
        matched = call("MatchUserIds", {"condition": condition, "user_ids": [user_id]})
        assert (matched["user_ids"], matched["valid_until_micros"]) == ([user_id], ["0"])
        called.add("MatchUserIds")
        assert int(call("CountUsers", {"condition": condition})["count"]) >= 1  # type: ignore[call-overload]
        called.add("CountUsers")
        profiles = call("BatchGetUserProfiles", {"user_ids": [user_id]})["profiles"]
        assert json.loads(profiles[0]["attributes_json"]) == {"plan": "pro", "seats": 4}  # type: ignore[index]
        called.add("BatchGetUserProfiles")
        stream = json.dumps({"users": [{"email": f"a-{email}"}]}) + json.dumps(
            {"users": [{"email": f"b-{email}"}]}
        )
        assert call("ImportUsers", stream)["created_count"] == "2"
        called.add("ImportUsers")
        event = {
            "message_id": f"grpcurl-{uuid.uuid4().hex}",
            "user_id": user_id,
            "event_type": "tracked.purchase",
            "occur_time": "2026-01-01T00:00:00Z",
            "data_json": "{}",
        }
        recorded = call("RecordUserEvents", {"events": [event]})
        assert int(recorded["recorded_count"]) == 1  # type: ignore[call-overload]
        called.add("RecordUserEvents")
        call("DeleteUser", {"user_id": user_id})
        called.add("DeleteUser")

    await asyncio.to_thread(exercise)
    assert called == {m.split(".")[-1] for m in methods}


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("secret connection string postgres://admin:hunter2@db"),
        # A bug of ours that asyncpg reports as an interface error: not an outage.
        asyncpg.InterfaceError("the server expects 2 arguments (hunter2), 1 was passed"),
    ],
    ids=["bug", "query-arguments"],
)
async def test_unexpected_errors_become_internal_with_a_trace_id_and_no_internals(
    suite_env: dict[str, str], caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    async def build(context: ServiceContext) -> ServiceComponents:
        async def explode(request: bytes, context: Any) -> bytes:
            raise failure

        handler = grpc.method_handlers_generic_handler(
            "lifecycle.users.v1.UserService",
            {"GetUser": grpc.unary_unary_rpc_method_handler(explode)},
        )
        return ServiceComponents(
            register=lambda server: server.add_generic_rpc_handlers((handler,))
        )

    definition = ServiceDefinition(
        name="users", migrations=DEFINITIONS["users"].migrations, build=build
    )
    config = service_config("users", {**suite_env, "LIFECYCLE_USERS_PORT": "0"})
    host = ServiceHost(definition, config, TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            error = await rpc_error(
                users_pb2_grpc.UserServiceStub(channel).GetUser(
                    users_pb2.GetUserRequest(user_id="x")
                )
            )
    finally:
        await host.stop()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "")
    trace_id = error_info(error).metadata["trace_id"]
    assert len(trace_id) == 32 and trace_id in (error.details() or "")
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert logged and trace_id in logged[0].getMessage() and logged[0].exc_info


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (lengths here stay under 128 per level
    but for the outer ones, so the varint is written in full)."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([field << 3 | 2]) + length + payload


def nested_attributes_request(depth: int) -> bytes:
    """A CreateUserRequest whose attributes nest `depth` objects deep, encoded by
    hand: the protobuf library itself refuses to build one past its depth limit."""
    struct = b""
    for _ in range(depth):
        value = _length_delimited(5, struct)  # Value.struct_value
        entry = _length_delimited(1, b"a") + _length_delimited(2, value)
        struct = _length_delimited(1, entry)  # Struct.fields
    user = _length_delimited(2, b"deep@example.com") + _length_delimited(4, struct)
    return _length_delimited(1, user)


@pytest.mark.parametrize(
    ("method", "request_bytes"),
    [
        ("GetUser", b"\x0a\xff\xff"),
        ("CreateUser", nested_attributes_request(200)),
    ],
    ids=["corrupt", "nested-past-the-parser-limit"],
)
async def test_a_request_that_does_not_parse_is_invalid_argument(
    users_host: ServiceHost, method: str, request_bytes: bytes
) -> None:
    async with grpc.aio.insecure_channel(users_host.address) as channel:
        call = channel.unary_unary(
            f"/lifecycle.users.v1.UserService/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        error = await rpc_error(call(request_bytes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request: is not a valid message of this method's type"


async def test_an_import_stream_with_a_request_that_does_not_parse_is_invalid_argument(
    users_host: ServiceHost,
) -> None:
    async with grpc.aio.insecure_channel(users_host.address) as channel:
        call = channel.stream_unary(
            "/lifecycle.users.v1.UserService/ImportUsers",
            request_serializer=None,
            response_deserializer=None,
        )
        error = await rpc_error(call(iter([b"\x0a\xff\xff"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_call_is_traced_across_the_wire_with_database_spans_and_no_health_spans(
    suite_env: dict[str, str],
) -> None:
    env = {**suite_env, "LIFECYCLE_USERS_PORT": "0"}
    async with running("users", env) as host:
        await wait_for_status(host.address, SERVING)
        SPANS.clear()
        tracer = TRACER_PROVIDER.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            async with grpc.aio.insecure_channel(host.address) as channel:
                stub = users_pb2_grpc.UserServiceStub(channel)
                await stub.CreateUser(
                    users_pb2.CreateUserRequest(
                        user=users_pb2.User(email=f"traced-{uuid.uuid4().hex[:8]}@example.com")
                    ),
                    metadata=tuple(carrier.items()),
                )
        await health_status(host.address)
    spans = SPANS.get_finished_spans()
    trace_id = caller.get_span_context().trace_id
    server = [s for s in spans if s.name == "/lifecycle.users.v1.UserService/CreateUser"]
    assert len(server) == 1
    assert server[0].context.trace_id == trace_id
    assert (
        server[0].parent is not None
        and server[0].parent.span_id == caller.get_span_context().span_id
    )
    database_spans = [
        s
        for s in spans
        if s.attributes
        and s.attributes.get("db.system") == "postgresql"
        and s.context.trace_id == trace_id
    ]
    assert database_spans
    assert all(s.parent is not None for s in database_spans)
    assert not [s for s in spans if "grpc.health" in s.name]


def test_json_logs_carry_the_trace_and_span_ids() -> None:

    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
        line = json.loads(JsonFormatter("lifecycle-users").format(record))
    assert line["message"] == "hello world"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert trace.get_current_span().get_span_context().is_valid is False


def test_json_logs_carry_the_actors_of_the_call_or_work_they_are_logged_for() -> None:
    formatter = JsonFormatter("lifecycle-triggers")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "starting", (), None)
    assert "actors" not in json.loads(formatter.format(record)), "no call, nobody to name"
    with TracerProvider().get_tracer("test").start_as_current_span("call"):
        assert json.loads(formatter.format(record))["actors"] == ["anonymous"]
    with calling_as(acting_for("triggers", ("alice",))):
        assert json.loads(formatter.format(record))["actors"] == ["alice", "service:triggers"]


@pytest.fixture
async def serving_process(
    suite_env: dict[str, str],
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        **suite_env,
        "LIFECYCLE_USERS_PORT": str(port),
        "LIFECYCLE_SHUTDOWN_GRACE_SECONDS": "5",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "suite.cli", "serve", "users"], env=env, stderr=subprocess.PIPE
    )
    address = f"127.0.0.1:{port}"
    for _ in range(100):
        try:
            if await health_status(address) == SERVING:
                break
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    try:
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_sigterm_during_load_loses_no_acknowledged_write(
    serving_process: tuple[subprocess.Popen[bytes], str], admin: asyncpg.Connection
) -> None:
    process, address = serving_process
    acknowledged: list[str] = []
    refused = 0
    batch = uuid.uuid4().hex[:8]

    async def writer(channel: grpc.aio.Channel, worker: int) -> None:
        nonlocal refused
        stub = users_pb2_grpc.UserServiceStub(channel)
        for n in range(10_000):
            try:
                reply = await stub.CreateUser(
                    users_pb2.CreateUserRequest(
                        user=users_pb2.User(email=f"load-{batch}-{worker}-{n}@example.com")
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                refused += 1
                return
            acknowledged.append(reply.user.id)

    async with grpc.aio.insecure_channel(address) as channel:
        writers = [asyncio.create_task(writer(channel, w)) for w in range(16)]

        async def under_load() -> bool:
            return len(acknowledged) > 3 * len(writers)

        await eventually(under_load)
        in_flight_before = len(acknowledged)
        process.send_signal(signal.SIGTERM)
        await asyncio.gather(*writers)
    returncode = await asyncio.to_thread(process.wait, 15)
    assert returncode == 0
    assert in_flight_before > 20
    assert refused == 16
    stored = await admin.fetch(
        "SELECT id::text FROM users.users WHERE email LIKE $1", f"load-{batch}-%"
    )
    assert {r["id"] for r in stored} >= set(acknowledged)
    logs = (process.stderr.read() if process.stderr else b"").decode()
    assert "received a stop signal" in logs and "users stopped" in logs


async def test_a_service_gets_channels_only_to_the_services_it_calls(
    users_host: ServiceHost,
) -> None:
    """The users service calls segments, workflows, triggers and metrics through
    its outbox and nothing directly; a channel to anything else is refused, so
    a call the architecture does not make cannot creep in unnoticed."""
    assert users_host.context is not None
    clients = users_host.context.clients
    assert DEFINITIONS["users"].callees == {"segments", "workflows", "triggers", "metrics"}
    assert clients.channel("metrics") is clients.channel("metrics")
    with pytest.raises(LookupError, match="users is not among the services this one calls"):
        clients.channel("users")
