"""Stubs of the five services, over one channel each."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from lifecycle.metrics.v1 import metrics_pb2_grpc
from lifecycle.segments.v1 import segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.config import TlsConfig
from runtime.tls import open_channel


@dataclass(frozen=True)
class Suite:
    users: users_pb2_grpc.UserServiceAsyncStub
    workflows: workflows_pb2_grpc.WorkflowServiceAsyncStub
    segments: segments_pb2_grpc.SegmentServiceAsyncStub
    triggers: triggers_pb2_grpc.TriggerServiceAsyncStub
    metrics: metrics_pb2_grpc.MetricsServiceAsyncStub


@contextlib.asynccontextmanager
async def connected(addresses: Mapping[str, str], tls: TlsConfig | None) -> AsyncIterator[Suite]:
    channels = {name: open_channel(address, tls) for name, address in addresses.items()}
    try:
        yield Suite(
            users=users_pb2_grpc.UserServiceStub(channels["users"]),
            workflows=workflows_pb2_grpc.WorkflowServiceStub(channels["workflows"]),
            segments=segments_pb2_grpc.SegmentServiceStub(channels["segments"]),
            triggers=triggers_pb2_grpc.TriggerServiceStub(channels["triggers"]),
            metrics=metrics_pb2_grpc.MetricsServiceStub(channels["metrics"]),
        )
    finally:
        for channel in channels.values():
            await channel.close(None)
