"""Users service throughput and latency, beside limits measured in the same run.

    python -m bench.users_bench [--calls 20000] [--concurrency 64] [--rows 100000]

- an empty grpc.aio unary call (bench/empty_server.py): the limit for RPCs, and
  the same call doing one `SELECT 1` through asyncpg: the floor any RPC that
  reads the database stands on;
- GetUser, ListUsers (pages of 100, walking the list) and
  CreateUser: calls per second, p50 and p99; the reads also beside the floor;
- ImportUsers rows per second, beside a raw asyncpg COPY of as many rows into
  the same table.
Targets: GetUser >= 90% of the floor (issue 18; >= 40% of the empty call
before); ImportUsers >= 30% of raw COPY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf import struct_pb2

from bench.empty_server import METHOD
from bench.harness import (
    Measurement,
    closed_loop,
    scratch_database,
    server_url,
    start_process,
    wait_serving,
)
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.config import service_role, with_user
from tests.support import free_port

PLANS = ["free", "pro", "team", "enterprise"]
COUNTRIES = ["DE", "FR", "US", "BR", "IN", "JP"]
IMPORT_BATCH = 5000


def attributes(n: int) -> dict[str, Any]:
    return {
        "plan": PLANS[n % len(PLANS)],
        "country": COUNTRIES[n % len(COUNTRIES)],
        "age": 18 + n % 60,
        "tags": ["beta"] if n % 7 == 0 else [],
        "signup_source": "ads" if n % 3 else "organic",
    }


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(data)
    return value


@contextlib.asynccontextmanager
async def process(
    args: list[str], env: dict[str, str], port: int
) -> AsyncIterator[grpc.aio.Channel]:
    """A server process, and a channel to it once it is ready."""
    started = start_process(args, env)
    try:
        await wait_serving(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        started.terminate()
        started.wait()


def users_service(database_url: str) -> contextlib.AbstractAsyncContextManager[grpc.aio.Channel]:
    port = free_port()
    env = {
        "LIFECYCLE_DATABASE_URL": database_url,
        "LIFECYCLE_USERS_PORT": str(port),
        "LIFECYCLE_LOG_LEVEL": "ERROR",
    }
    return process(["-m", "suite.cli", "serve", "users"], env, port)


async def measure_empty(
    name: str, calls: int, concurrency: int, database_url: str | None
) -> Measurement:
    port = free_port()
    args = ["-m", "bench.empty_server", str(port), *([database_url] if database_url else [])]
    async with process(args, {}, port) as channel:
        empty = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        await closed_loop("warm-up", lambda n: empty(b""), 2000, concurrency)
        return await closed_loop(name, lambda n: empty(b""), calls, concurrency)


async def measure_users(
    database_url: str, calls: int, concurrency: int
) -> tuple[Measurement, Measurement, Measurement]:
    """GetUser over the users already loaded, then CreateUser. (In that order:
    creates leave events for peers that are not running here, and their retries
    would weigh on the reads.)"""
    ids = await _user_ids(database_url)
    async with users_service(database_url) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)

        async def get(n: int) -> object:
            return await stub.GetUser(users_pb2.GetUserRequest(user_id=random.choice(ids)))

        await closed_loop("warm-up", get, 2000, concurrency)
        got = await closed_loop("GetUser", get, calls, concurrency)
        listed = await closed_loop("ListUsers, 100 a page", list_page(stub), calls, concurrency)
        run = uuid.uuid4().hex[:8]

        async def create(n: int) -> object:
            user = users_pb2.User(
                email=f"bench-{run}-{n}@example.com", attributes=struct(attributes(n))
            )
            return await stub.CreateUser(users_pb2.CreateUserRequest(user=user))

        return got, listed, await closed_loop("CreateUser", create, calls, concurrency)


def list_page(stub: users_pb2_grpc.UserServiceAsyncStub) -> Callable[[int], Awaitable[object]]:
    """ListUsers pages of 100, walking the list (each call goes on from the
    latest page any call reached, and starts over at its end)."""
    token = ""

    async def page(n: int) -> object:
        nonlocal token
        reply = await stub.ListUsers(users_pb2.ListUsersRequest(page_size=100, page_token=token))
        token = reply.next_page_token
        return reply

    return page


async def _user_ids(database_url: str) -> list[str]:
    conn = await asyncpg.connect(with_user(database_url, service_role(database_url, "users")))
    try:
        return [row["id"] for row in await conn.fetch("SELECT id::text AS id FROM users.users")]
    finally:
        await conn.close()


async def measure_copy(database_url: str, rows: int) -> float:
    """Seconds for a raw COPY of `rows` users into users.users, as the users role."""
    conn = await asyncpg.connect(with_user(database_url, service_role(database_url, "users")))
    try:
        run = uuid.uuid4().hex[:8]
        records = [
            (f"copy-{run}-{n}@example.com", "Acquisition", json.dumps(attributes(n)))
            for n in range(rows)
        ]
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "users",
            records=records,
            columns=["email", "current_lifecycle_stage", "attributes"],
            schema_name="users",
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def measure_import(database_url: str, rows: int) -> float:
    run = uuid.uuid4().hex[:8]
    messages = [
        users_pb2.ImportUsersRequest(
            users=[
                users_pb2.UserImport(
                    email=f"import-{run}-{n}@example.com", attributes=struct(attributes(n))
                )
                for n in range(start, min(rows, start + IMPORT_BATCH))
            ]
        )
        for start in range(0, rows, IMPORT_BATCH)
    ]

    async def stream() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        for message in messages:
            yield message

    async with users_service(database_url) as channel:
        started = time.perf_counter()
        result = await users_pb2_grpc.UserServiceStub(channel).ImportUsers(stream())
        seconds = time.perf_counter() - started
    assert result.created_count == rows, result
    return seconds


async def main(calls: int, concurrency: int, rows: int) -> None:
    with server_url() as url:
        async with scratch_database(url) as database_url:
            empty = await measure_empty("empty unary call (limit)", calls, concurrency, None)
            floor = await measure_empty("empty call + SELECT 1", calls, concurrency, database_url)
            copy_seconds = await measure_copy(database_url, rows)
            got, listed, created = await measure_users(database_url, calls, concurrency)
            import_seconds = await measure_import(database_url, rows)
    print(f"users service, {calls} calls at concurrency {concurrency}:")
    print(empty.line())
    print(floor.line(empty))
    print(got.line(empty))
    print(f"{'':<28} {got.rate / floor.rate:10.1%} of the floor (target >= 90%)")
    print(listed.line(empty))
    print(f"{'':<28} {listed.rate / floor.rate:10.1%} of the floor")
    print(created.line(empty))
    copy_rate = rows / copy_seconds
    print(f"{'raw COPY (limit)':<28} {copy_rate:10.0f} rows/s  ({rows} rows)")
    rate = rows / import_seconds
    share = rate / copy_rate
    print(f"{'ImportUsers':<28} {rate:10.0f} rows/s  {share:6.1%} of raw COPY  (target >= 30%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.rows))
