"""The workflows service as a process of its own (`lifecycle serve workflows`),
for the tests that kill it and start it again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@asynccontextmanager
async def service_process(env: dict[str, str]) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The service, serving once its health says so; killed on the way out if alive."""
    process = subprocess.Popen(
        [sys.executable, "-m", "suite.cli", "serve", "workflows"],
        env={**os.environ, **env, "LIFECYCLE_LOG_LEVEL": "ERROR"},
        stderr=subprocess.DEVNULL,
    )
    address = env["LIFECYCLE_WORKFLOWS_ADDRESS"]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
