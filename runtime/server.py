"""The gRPC host of one service: its lifecycle from start to graceful stop.

start: pool (lazy) -> service components -> grpc.aio server with tracing and
error interceptors, the operations service (runtime.operations), health and
reflection -> workers (outbox relay, ...).
stop (SIGTERM/SIGINT, or `stop()`): health flips to NOT_SERVING, an optional
drain delay, the server stops taking calls and gives in-flight ones a grace
period, workers finish, channels and pool close, spans are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from lifecycle.operations.v1 import operations_pb2_grpc
from runtime.admission import Admission
from runtime.auth import Authenticator, CallingService, Gate, ServiceToken, access_of
from runtime.clients import GRPC_SERVICES, OPERATIONS_SERVICE, ServiceClients
from runtime.config import ConnectionLimits, ServiceConfig
from runtime.database import UnitOfWork, create_pool, unit_of_work
from runtime.identity import acting_for, calling_as
from runtime.interceptors import ServiceInterceptor
from runtime.operations import OperationsServicer
from runtime.outbox import Destination, OutboxRelay
from runtime.pagination import PageTokens
from runtime.partitions import PartitionedTable
from runtime.telemetry import instrument_database
from runtime.tls import peer_service, server_credentials
from runtime.worker import Pause, PollingWorker, Rest

log = logging.getLogger(__name__)

# Readiness is "" (what the kubelet asks by default); liveness does not depend on the database.
LIVENESS = "liveness"
HEALTH_INTERVAL_SECONDS = 2.0


class Worker(Protocol):
    """A background loop of a service; it returns soon after `stopping` is set."""

    name: str

    async def run(self, stopping: asyncio.Event) -> None: ...


@dataclass
class ServiceContext:
    """What a service is built from."""

    config: ServiceConfig
    pool: asyncpg.Pool
    clients: ServiceClients
    page_tokens: PageTokens
    relay: OutboxRelay
    tracer_provider: TracerProvider

    def unit_of_work(self) -> contextlib.AbstractAsyncContextManager[UnitOfWork]:
        return unit_of_work(self.pool, on_commit=self.relay.wake)


@dataclass
class ServiceComponents:
    """What a built service adds to the host."""

    register: Callable[[grpc.aio.Server], None] | None = None
    workers: Sequence[Worker] = field(default_factory=tuple)


@dataclass(frozen=True)
class ServiceDefinition:
    """A service of the suite, as the runtime sees it."""

    name: str
    migrations: Path
    build: Callable[[ServiceContext], Awaitable[ServiceComponents]]
    partitioned_tables: tuple[PartitionedTable, ...] = ()
    # Outbox topics this service sends, and where they go.
    destinations: dict[str, Destination] = field(default_factory=dict)
    # The services it calls directly, in the course of its own work. With its
    # destinations' services these are all it may call: it gets channels to
    # these only, and the NetworkPolicies allow exactly these (deploy/k8s).
    calls: frozenset[str] = frozenset()
    # Upkeep the service owns (retention, ...), run by `lifecycle maintenance` on a
    # connection acting as the service's role in its schema; returns lines to report.
    maintenance: Callable[[asyncpg.Connection, date], Awaitable[list[str]]] | None = None
    # Calls to other services that wait elsewhere than in the outbox, for `lifecycle
    # outbox`: a query in the service's schema giving rows like the outbox's
    # (kind, topic, messages, oldest, last_error).
    waiting: str | None = None
    # Adds the service's own `lifecycle` subcommands to the CLI's subparsers; each
    # parser sets `run`, an async function (conn, args) that the CLI calls on a
    # connection acting as the service's role in its schema.
    commands: Callable[[Any], None] | None = None
    # The repeated fields (full names) that hold a batch RPC's items, each
    # answered alone: the servicer checks them (runtime.wire_checks), not the
    # interceptor, so that one bad item does not refuse the whole request.
    batch_items: frozenset[str] = frozenset()

    @property
    def grpc_service(self) -> str:
        return GRPC_SERVICES[self.name]

    @property
    def callees(self) -> frozenset[str]:
        """Every service this one calls, directly or through its outbox."""
        return self.calls | {destination.service for destination in self.destinations.values()}


class ServiceHost:
    def __init__(
        self, definition: ServiceDefinition, config: ServiceConfig, tracer_provider: TracerProvider
    ) -> None:
        self.definition = definition
        self.config = config
        # Owned by the caller, who shuts it down; asyncpg spans go to the first
        # provider a process instruments with, so a process has one.
        self.tracer_provider = tracer_provider
        self.port = 0
        self.health_port = 0
        self.context: ServiceContext | None = None
        self._server: grpc.aio.Server | None = None
        self._probes: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._admission = Admission()
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: asyncpg.Pool | None = None
        self._clients: ServiceClients | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        instrument_database(self.tracer_provider)
        self._pool = await create_pool(
            config.database_url,
            self.definition.name,
            config.pool_max_size,
            config.db_connect_timeout,
        )
        peers = {name: config.peers[name] for name in self.definition.callees}
        name = self.definition.name
        self._clients = ServiceClients(
            peers,
            config.call_timeout,
            self.tracer_provider,
            CallingService(name, ServiceToken(config.auth, name)),
            tls=config.tls,
        )
        relay = OutboxRelay(
            self._pool,
            self._clients,
            self.definition.destinations,
            service=name,
            poll_interval=config.outbox_poll_interval,
            max_refusals=config.outbox_max_refusals,
            max_backoff_seconds=config.outbox_max_backoff,
            tracer_provider=self.tracer_provider,
        )
        self.context = ServiceContext(
            config,
            self._pool,
            self._clients,
            PageTokens(config.page_token_secret),
            relay,
            self.tracer_provider,
        )
        components = await self.definition.build(self.context)
        self._server = self._grpc_server(components)
        await self._set_readiness(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        address = f"{config.host}:{config.port}"
        self.port = (
            self._server.add_secure_port(address, server_credentials(config.tls))
            if config.tls is not None
            else self._server.add_insecure_port(address)
        )
        await self._server.start()
        if config.health_port is not None:
            self._probes = await self._serve_probes(config.health_port)
        workers: list[Worker] = [
            _ReadinessWatch(self._pool, self._set_readiness),
            relay,
            *components.workers,
        ]
        for worker in workers:
            self._tasks.append(asyncio.create_task(self._run_worker(worker)))
        log.info("%s listening on %s", self.definition.name, self.address)

    def _grpc_server(self, components: ServiceComponents) -> grpc.aio.Server:
        config = self.config
        server = grpc.aio.server(
            interceptors=[
                ServiceInterceptor(
                    f"lifecycle.{self.definition.name}",
                    self.tracer_provider,
                    self._gate(),
                    self._admission,
                    self.definition.batch_items,
                )
            ],
            options=[
                # Clients reconnect now and then, so round_robin sees new replicas.
                ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.shutdown_grace * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                *_connection_bounds(config.limits),
            ],
            # Past it a call is answered RESOURCE_EXHAUSTED at once rather than queued.
            maximum_concurrent_rpcs=config.limits.concurrent_calls,
        )
        if components.register is not None:
            components.register(server)
        operations_pb2_grpc.add_OperationsServiceServicer_to_server(self._operations(), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                self.definition.grpc_service,
                OPERATIONS_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    def _operations(self) -> OperationsServicer:
        """What waits in this service's outbox and queues, served on its port."""
        assert self.context is not None
        definition = self.definition
        return OperationsServicer(
            definition.name,
            self.context.pool,
            definition.destinations,
            definition.waiting,
            self.context.relay.wake,
        )

    def _gate(self) -> Gate:
        """Who may call this service's RPCs, as their .proto declares it."""
        pool = descriptor_pool.Default()
        access = {
            **access_of(pool.FindServiceByName(self.definition.grpc_service)),
            **access_of(pool.FindServiceByName(OPERATIONS_SERVICE)),
        }
        # Under mutual TLS a service is known by its certificate.
        peers = peer_service if self.config.tls is not None else None
        return Gate(Authenticator(self.config.auth, peers), access)

    async def _serve_probes(self, port: int) -> grpc.aio.Server:
        """The health service alone, in plaintext, for probes that cannot do TLS
        (the kubelet's gRPC probe): it tells no more than whether to send calls."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.health_port = server.add_insecure_port(f"{self.config.host}:{port}")
        await server.start()
        return server

    async def _run_worker(self, worker: Worker) -> None:
        # A worker is the service working on its own: what it changes is the
        # service's doing, unless it acts for the chain stored with the work.
        try:
            with calling_as(acting_for(self.definition.name, ())):
                await worker.run(self._stopping)
        except Exception:
            log.exception("worker %s stopped on an error", worker.name)
            raise

    async def _set_readiness(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        if self._stopping.is_set():
            return  # the graceful stop has said NOT_SERVING for good
        for name in ("", self.definition.grpc_service):
            await self._health.set(name, status)

    async def stop(self) -> None:
        """Graceful stop; safe to call more than once."""
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        try:
            await self._health.enter_graceful_shutdown()
            if self.config.drain_delay > 0:
                await asyncio.sleep(self.config.drain_delay)
            if self._server is not None:
                await self._stop_serving()
            await self._finish_workers()
            if self._clients is not None:
                await self._clients.close()
            if self._pool is not None:
                await asyncio.wait_for(self._pool.close(), self.config.shutdown_grace)
            self.tracer_provider.force_flush()
        finally:
            self._stopped.set()
            log.info("%s stopped", self.definition.name)

    async def _stop_serving(self) -> None:
        """New calls are refused with UNAVAILABLE while the calls taken finish
        (runtime.admission); the server stops once they have, within the grace."""
        assert self._server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_grace
        await self._admission.close(self.config.shutdown_grace)
        await self._server.stop(max(0.0, deadline - loop.time()))
        if self._probes is not None:
            await self._probes.stop(None)

    async def _finish_workers(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.config.shutdown_grace)
        for task in pending:
            task.cancel()

    async def serve(self) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        log.info("%s received a stop signal", self.definition.name)
        await self.stop()


def _connection_bounds(limits: ConnectionLimits) -> list[tuple[str, int]]:
    """gRPC core's server arguments for the limits (grpc/impl/channel_arg_names.h)."""
    return [
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.max_idle * 1000)),
        ("grpc.max_concurrent_streams", limits.streams_per_connection),
        # Count streams as HTTP/2 does, which clients follow by queueing: gRPC's
        # default also counts streams the client has seen end but the server has
        # not freed yet, and refuses the client's next ones (UNAVAILABLE).
        ("grpc.http.overload_protection", 0),
    ]


class _ReadinessWatch(PollingWorker):
    """Readiness follows the database: SERVING only while `SELECT 1` answers."""

    name = "readiness"
    outlived = ()

    def __init__(
        self,
        pool: asyncpg.Pool,
        set_readiness: Callable[[health_pb2.HealthCheckResponse.ServingStatus], Awaitable[None]],
    ) -> None:
        super().__init__(HEALTH_INTERVAL_SECONDS)
        self._pool = pool
        self._set_readiness = set_readiness

    async def round(self) -> Pause:
        try:
            await asyncio.wait_for(self._pool.fetchval("SELECT 1"), HEALTH_INTERVAL_SECONDS)
            status = health_pb2.HealthCheckResponse.SERVING
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("database unreachable: %s", error)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_readiness(status)
        return Rest(HEALTH_INTERVAL_SECONDS)
