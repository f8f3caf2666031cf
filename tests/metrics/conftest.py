"""Fixtures of the metrics tests: a metrics server of their own on a free port
(never the session's suite ports: the users tests expect their events to stay
undelivered), a clock the tests move, and databases of their own where a test
needs the whole event log to itself (populations and retention are global)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import grpc

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from runtime.clock import ManualClock
from runtime.config import service_role
from runtime.database import Executor
from runtime.migrations import SchemaOwner, acting_as
from runtime.partitions import ensure_partitions
from runtime.server import ServiceHost
from runtime.stages import stage_value
from runtime.structs import set_timestamp
from services.metrics.domain import EVENTS_TABLE, METRICS_TABLE
from services.metrics.service import builder
from services.metrics.settings import MetricsSettings
from suite.registry import schema_owners
from tests.support import TRACER_PROVIDER, ScratchDatabase, free_port, service_config, service_env


@dataclass
class MetricsServer:
    host: ServiceHost
    stub: metrics_pb2_grpc.MetricsServiceAsyncStub
    clock: ManualClock

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.host.context is not None
        return self.host.context.pool


@asynccontextmanager
async def serve_metrics(
    database: ScratchDatabase, clock: ManualClock, *, rollup_interval: float = 0
) -> AsyncIterator[MetricsServer]:
    """A real metrics gRPC server on a free port, with the given clock; its
    scheduled rollup is off unless an interval is given."""
    env = service_env(database, {"metrics": free_port()})
    settings = MetricsSettings(
        tempfile.gettempdir(), None, rollup_interval=rollup_interval, late_days=3
    )
    host = ServiceHost(builder(clock, settings), service_config("metrics", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            yield MetricsServer(host, metrics_pb2_grpc.MetricsServiceStub(channel), clock)
    finally:
        await host.stop()


def metrics_owner(database: ScratchDatabase) -> SchemaOwner:
    [owner] = [o for o in schema_owners(database.admin_url, env={}) if o.schema == "metrics"]
    return owner


@asynccontextmanager
async def as_metrics(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection acting as the metrics role in its schema, as maintenance does."""
    conn = await asyncpg.connect(database.admin_url)
    try:
        async with acting_as(conn, metrics_owner(database)):
            yield conn
    finally:
        await conn.close()


async def create_partitions(database: ScratchDatabase, day: date, months_behind: int = 0) -> None:
    async with as_metrics(database) as conn:
        await ensure_partitions(conn, EVENTS_TABLE, day, behind=months_behind)
        await ensure_partitions(conn, METRICS_TABLE, day, behind=months_behind // 12 + 1)


def event(
    event_type: str,
    at: datetime,
    *,
    user_id: uuid.UUID | str | None = None,
    stage: str | None = None,
    data: dict[str, Any] | None = None,
    execution_id: uuid.UUID | None = None,
    event_id: str | None = None,
    producer: str = "tests",
) -> metrics_pb2.LifecycleEvent:
    message = metrics_pb2.LifecycleEvent(
        event_id=event_id or str(uuid.uuid4()),
        event_type=event_type,
        user_id=str(user_id or ""),
        workflow_execution_id=str(execution_id or ""),
        lifecycle_stage=stage_value(stage),
        producer=producer,
    )
    if data:
        message.data.update(data)
    set_timestamp(message.event_time, at)
    return message


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


async def metric_rows(conn: Executor) -> list[tuple[Any, ...]]:
    """Every metrics_daily row, in key order."""
    rows = await conn.fetch(
        "SELECT metric_date, lifecycle_stage, metric_name, dimensions::text, metric_value"
        " FROM metrics_daily ORDER BY 1, 2, 3, 4"
    )
    return [tuple(r) for r in rows]


def role_of(database: ScratchDatabase) -> str:
    return service_role(database.admin_url, "metrics")
