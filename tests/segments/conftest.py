"""Fixtures of the segments tests: a database of their own (so that no other
test's users service relays this one's outbox, and user counts are theirs),
a users and a segments service on free ports, the segments service on a clock
the tests move, and a triggers service, which receives segment events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clock import ShiftedClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.segments.service import DEFINITION, build
from services.segments.settings import SegmentSettings
from tests.conftest import migrated_database
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    free_port,
    running,
    service_config,
    service_env,
)


@pytest.fixture(scope="session")
async def segments_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    async with migrated_database(server_url, "lifecycle_segments") as database:
        yield database


@pytest.fixture(scope="session")
def segment_ports() -> dict[str, int]:
    return {name: free_port() for name in ("users", "segments", "triggers")}


@pytest.fixture(scope="session")
def segments_env(
    segments_database: ScratchDatabase, segment_ports: dict[str, int]
) -> dict[str, str]:
    # Metrics and workflows calls go to the triggers service, which answers
    # UNIMPLEMENTED for them at once: they wait in the outboxes, for the tests to
    # read, without a dead port stalling each relay round for its call timeout.
    unimplemented = f"127.0.0.1:{segment_ports['triggers']}"
    return service_env(
        segments_database,
        segment_ports,
        LIFECYCLE_METRICS_ADDRESS=unimplemented,
        LIFECYCLE_WORKFLOWS_ADDRESS=unimplemented,
    )


@asynccontextmanager
async def serve_segments(
    env: dict[str, str], clock: ShiftedClock, settings: SegmentSettings, port: int | None = None
) -> AsyncIterator[ServiceHost]:
    definition = replace(DEFINITION, build=partial(build, clock=clock, settings=settings))
    config = service_config("segments", env)
    if port is not None:
        config = replace(config, port=port)
    host = ServiceHost(definition, config, TRACER_PROVIDER)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@dataclass
class Suite:
    users: users_pb2_grpc.UserServiceAsyncStub
    segments: segments_pb2_grpc.SegmentServiceAsyncStub
    clock: ShiftedClock
    segments_host: ServiceHost
    users_host: ServiceHost

    @property
    def segments_pool(self) -> asyncpg.Pool:
        assert self.segments_host.context is not None
        return self.segments_host.context.pool

    async def create_user(
        self, attributes: dict[str, Any] | None = None, stage: int = 0
    ) -> users_pb2.User:
        user = users_pb2.User(
            email=f"seg-{uuid.uuid4().hex[:12]}@example.com",
            attributes=dict_to_struct(attributes or {}),
            lifecycle_stage=stage,  # type: ignore[arg-type]
        )
        return (await self.users.CreateUser(users_pb2.CreateUserRequest(user=user))).user

    async def create_segment(
        self, conditions: dict[str, Any], stages: tuple[int, ...] = (), name: str = "segment"
    ) -> segments_pb2.Segment:
        segment = segments_pb2.Segment(
            name=name,
            conditions=dict_to_struct(conditions),
            lifecycle_stages=stages,  # type: ignore[arg-type]
        )
        request = segments_pb2.CreateSegmentRequest(segment=segment)
        return (await self.segments.CreateSegment(request)).segment

    async def change_conditions(
        self, segment_id: str, conditions: dict[str, Any]
    ) -> segments_pb2.Segment:
        request = segments_pb2.UpdateSegmentRequest(
            segment=segments_pb2.Segment(id=segment_id, conditions=dict_to_struct(conditions)),
            update_mask=field_mask_pb2.FieldMask(paths=["conditions"]),
        )
        return (await self.segments.UpdateSegment(request)).segment

    async def refresh(self, segment_id: str) -> segments_pb2.RefreshSegmentResponse:
        return await self.segments.RefreshSegment(
            segments_pb2.RefreshSegmentRequest(segment_id=segment_id)
        )

    async def members(self, segment_id: str) -> set[str]:
        response = await self.segments.ListSegmentMembers(
            segments_pb2.ListSegmentMembersRequest(segment_id=segment_id, page_size=1000)
        )
        return {m.user_id for m in response.memberships}

    async def settle(self) -> None:
        """Waits until the users service delivered every ReevaluateUsers and erase
        call, so that a test's own calls do not race with them."""
        assert self.users_host.context is not None
        pool = self.users_host.context.pool
        for _ in range(200):
            pending = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE topic LIKE 'segments.%'"
            )
            if pending == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the users service's calls to segments stay undelivered")


# The scheduler is off here, so that the tests decide when segments refresh.
MANUAL = SegmentSettings(scheduler_interval=0)


@pytest.fixture(scope="session")
async def suite(
    segments_env: dict[str, str], segment_ports: dict[str, int]
) -> AsyncIterator[Suite]:
    clock = ShiftedClock()
    async with (
        running("triggers", segments_env),
        running("users", segments_env) as users_host,
        serve_segments(segments_env, clock, MANUAL) as segments_host,
        grpc.aio.insecure_channel(users_host.address) as users_channel,
        grpc.aio.insecure_channel(segments_host.address) as segments_channel,
    ):
        yield Suite(
            users_pb2_grpc.UserServiceStub(users_channel),
            segments_pb2_grpc.SegmentServiceStub(segments_channel),
            clock,
            segments_host,
            users_host,
        )


@pytest.fixture
def clock(suite: Suite) -> Iterator[ShiftedClock]:
    """The segments service's clock, back to real time after the test."""
    yield suite.clock
    suite.clock.reset()


@pytest.fixture
async def segments_admin(segments_database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(segments_database.admin_url)
    try:
        yield conn
    finally:
        await conn.close()
