"""What the benchmarks share: a scratch database on a real PostgreSQL, services
started as real processes, and a closed-loop load generator that reports
throughput and latency percentiles.

Each benchmark prints its figure beside a limit measured in the same run
(an empty gRPC call, a raw asyncpg COPY), so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.config import SERVICE_NAMES, with_database
from runtime.migrations import migrate, quote_identifier
from suite.database import data_dir, embedded_server
from suite.registry import schema_owners


@dataclass(frozen=True)
class Measurement:
    name: str
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def line(self, limit: Measurement | None = None) -> str:
        ratio = f"  {self.rate / limit.rate:6.1%} of {limit.name}" if limit else ""
        return (
            f"{self.name:<28} {self.rate:10.0f}/s   p50 {self.percentile(0.5):6.2f} ms"
            f"   p99 {self.percentile(0.99):6.2f} ms{ratio}"
        )


async def closed_loop(
    name: str, call: Callable[[int], Awaitable[object]], calls: int, concurrency: int
) -> Measurement:
    """`calls` calls from `concurrency` workers, each starting its next call when the last ends."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for n in counter:
            started = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Measurement(name, calls, time.perf_counter() - started, latencies)


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    url = os.environ.get("LIFECYCLE_BENCH_DATABASE_URL")
    if url:
        yield url
        return
    with embedded_server(data_dir() / "postgres") as embedded:
        yield embedded


@contextlib.asynccontextmanager
async def scratch_database(url: str) -> AsyncIterator[str]:
    """A migrated database of its own, dropped afterwards with its roles."""
    name = f"lifecycle_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE DATABASE {quote_identifier(name)}")
    database_url = with_database(url, name)
    try:
        await migrate(database_url, schema_owners(database_url, env={}))
        yield database_url
    finally:
        await admin.execute(f"DROP DATABASE {quote_identifier(name)} WITH (FORCE)")
        for service in SERVICE_NAMES:
            await admin.execute(f"DROP ROLE IF EXISTS {quote_identifier(f'{name}_{service}')}")
        await admin.close()


# The services of one benchmark run share a page token key, as replicas do.
_PAGE_TOKEN_SECRET = secrets.token_hex(16)


def start_process(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    keyed = {"LIFECYCLE_PAGE_TOKEN_SECRET": _PAGE_TOKEN_SECRET, **os.environ, **env}
    return subprocess.Popen([sys.executable, *args], env=keyed, stderr=subprocess.DEVNULL)


async def wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} never became ready")
