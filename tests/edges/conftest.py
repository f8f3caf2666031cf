"""The five services on a database of their own, for tests that act as a
hostile client would: malformed values, failing items in batches, oversized
errors, generated requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest

from lifecycle.metrics.v1 import metrics_pb2_grpc
from lifecycle.segments.v1 import segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2_grpc
from suite.registry import DEFINITIONS
from tests.conftest import migrated_database
from tests.support import ScratchDatabase, free_port, service_env, whole_suite

if TYPE_CHECKING:
    from lifecycle.metrics.v1.metrics_pb2_grpc import MetricsServiceAsyncStub
    from lifecycle.segments.v1.segments_pb2_grpc import SegmentServiceAsyncStub
    from lifecycle.triggers.v1.triggers_pb2_grpc import TriggerServiceAsyncStub
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub
else:
    UserServiceAsyncStub = WorkflowServiceAsyncStub = SegmentServiceAsyncStub = Any
    TriggerServiceAsyncStub = MetricsServiceAsyncStub = Any

PAGE_TOKEN_SECRET = "edges-page-token-secret"


@dataclass
class Edges:
    env: dict[str, str]
    admin_url: str
    channels: dict[str, grpc.aio.Channel]
    users: UserServiceAsyncStub
    workflows: WorkflowServiceAsyncStub
    segments: SegmentServiceAsyncStub
    triggers: TriggerServiceAsyncStub
    metrics: MetricsServiceAsyncStub


@pytest.fixture(scope="package")
async def edges_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    async with migrated_database(server_url, "lifecycle_edges") as database:
        yield database


@pytest.fixture(scope="package")
async def edges(edges_database: ScratchDatabase) -> AsyncIterator[Edges]:
    env = service_env(
        edges_database,
        {name: free_port() for name in DEFINITIONS},
        LIFECYCLE_PAGE_TOKEN_SECRET=PAGE_TOKEN_SECRET,
        LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS="0",
        LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS="0",
        LIFECYCLE_WORKFLOWS_POLL_SECONDS="0.2",
        LIFECYCLE_LOG_LEVEL="ERROR",
    )
    async with whole_suite(env) as channels:
        yield Edges(
            env,
            edges_database.admin_url,
            channels,
            users_pb2_grpc.UserServiceStub(channels["users"]),
            workflows_pb2_grpc.WorkflowServiceStub(channels["workflows"]),
            segments_pb2_grpc.SegmentServiceStub(channels["segments"]),
            triggers_pb2_grpc.TriggerServiceStub(channels["triggers"]),
            metrics_pb2_grpc.MetricsServiceStub(channels["metrics"]),
        )


@pytest.fixture
async def edges_admin(edges_database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(edges_database.admin_url)
    try:
        yield conn
    finally:
        await conn.close()
