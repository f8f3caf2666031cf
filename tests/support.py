"""Helpers the tests share: starting real services on loopback ports against a
real PostgreSQL database, and reading rich errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.config import SERVICE_NAMES, ServiceConfig, load_service_config, load_tls_config
from runtime.migrations import RUNTIME_MIGRATIONS, load_migrations
from runtime.server import ServiceHost
from runtime.structs import from_unix_micros
from runtime.tls import open_channel
from suite.registry import DEFINITIONS

T = TypeVar("T")


@dataclass(frozen=True)
class ScratchDatabase:
    admin_url: str
    name: str


def migration_count() -> int:
    """How many migrations a fresh database receives: the runtime's in every
    schema, and each service's own."""
    runtime = len(load_migrations(RUNTIME_MIGRATIONS, "runtime"))
    return sum(runtime + len(load_migrations(d.migrations, d.name)) for d in DEFINITIONS.values())


def valid_until_of(micros: int) -> datetime | None:
    """A MatchUserIds valid_until: microseconds since the Unix epoch; 0 is none."""
    return from_unix_micros(micros) if micros else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database: ScratchDatabase, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """The environment a service of the test suite runs with."""
    env = {
        "LIFECYCLE_DATABASE_URL": database.admin_url,
        "LIFECYCLE_SHUTDOWN_GRACE_SECONDS": "5",
        "LIFECYCLE_OUTBOX_POLL_SECONDS": "0.2",
        "LIFECYCLE_OUTBOX_MAX_BACKOFF_SECONDS": "1",
        "LIFECYCLE_CALL_TIMEOUT_SECONDS": "2",
        "LIFECYCLE_PAGE_TOKEN_SECRET": "tests-page-tokens",
    }
    for name in SERVICE_NAMES:
        port = ports.get(name, 1)
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(port)
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    env.update(extra)
    return env


def service_config(service: str, env: dict[str, str]) -> ServiceConfig:
    return load_service_config(service, env)


def channel_to(address: str, env: Mapping[str, str]) -> grpc.aio.Channel:
    """A channel to a service as a client with the TLS settings of `env` (the
    suite's own), plaintext without them."""
    return open_channel(address, load_tls_config(env))


SPANS = InMemorySpanExporter()
TRACER_PROVIDER = TracerProvider()
TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(SPANS))


@asynccontextmanager
async def running(service: str, env: dict[str, str]) -> AsyncIterator[ServiceHost]:
    """A real gRPC server of `service` in this process, stopped gracefully on exit.
    Its spans land in SPANS."""
    host = ServiceHost(DEFINITIONS[service], service_config(service, env), TRACER_PROVIDER)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@asynccontextmanager
async def whole_suite(
    env: dict[str, str],
    own: Callable[[str], Mapping[str, str]] = lambda service: {},
    client: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """The five services in this process, each with `env` and its `own`
    settings (its certificate, say), and a channel to each by name, with the
    `client`'s TLS settings (plaintext without)."""
    async with contextlib.AsyncExitStack() as stack:
        for name in DEFINITIONS:
            await stack.enter_async_context(running(name, {**env, **own(name)}))
        channels = {
            name: channel_to(env[f"LIFECYCLE_{name.upper()}_ADDRESS"], client or {})
            for name in DEFINITIONS
        }
        try:
            yield channels
        finally:
            for channel in channels.values():
                await channel.close(None)


def serve_and_fail(service: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`lifecycle serve <service>` with `env`, expected to stop at start."""
    return subprocess.run(
        [sys.executable, "-m", "suite.cli", "serve", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call fails with; fails the test if it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded but was expected to fail")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("the error has no ErrorInfo")


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return [v.field for v in bad_request.field_violations]
    return []


class TcpProxy:
    """Forwards a loopback port to a PostgreSQL server, so a test can cut the
    database off from a service and give it back."""

    def __init__(self, target_url: str) -> None:

        parts = urlsplit(target_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        self._unix_path = (
            f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir.startswith("/") else None
        )
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._streams: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Closes the port and every connection through it."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._streams:
            writer.close()
        self._streams.clear()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._unix_path:
            reader, writer = await asyncio.open_unix_connection(self._unix_path)
        else:
            reader, writer = await asyncio.open_connection(*self._target)
        self._streams += [client_writer, writer]
        await asyncio.gather(
            _pipe(client_reader, writer), _pipe(reader, client_writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float = 15.0, interval: float = 0.05
) -> None:
    """Waits until `check` holds, failing after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(interval)


async def starts_waiting_for_workflows(database_url: str, age_minutes: int = 0) -> None:
    """Two workflow starts a trigger fired, waiting (`age_minutes` old) for a
    workflows service that is down: what `lifecycle outbox` and GetOutbox list
    beside the triggers' outbox."""
    conn = await asyncpg.connect(database_url)
    try:
        trigger = await conn.fetchval(
            "INSERT INTO triggers.triggers (name, event_type, conditions, workflow_id)"
            " VALUES ('signup', 'signup', '{}', gen_random_uuid()) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO triggers.pending_starts"
            " (trigger_execution_id, executed_at, trigger_id, user_id, event_type, request,"
            "  attempts, last_error)"
            " SELECT gen_random_uuid(), now() - make_interval(mins => $2), $1,"
            "  gen_random_uuid(), 'signup', '', 3, 'UNAVAILABLE: the workflows service is down'"
            " FROM generate_series(1, 2)",
            trigger,
            age_minutes,
        )
    finally:
        await conn.close()
