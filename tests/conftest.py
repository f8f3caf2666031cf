"""Fixtures: one real PostgreSQL per test session (embedded, or the server that
LIFECYCLE_TEST_DATABASE_URL names), a fresh database and roles per session,
dropped at the end, and real gRPC servers on loopback ports."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest

from lifecycle.users.v1 import users_pb2_grpc
from runtime.config import service_role, with_database
from runtime.migrations import migrate, quote_identifier
from runtime.server import ServiceHost
from suite.database import data_dir, embedded_server
from suite.registry import DEFINITIONS, schema_owners
from tests.support import ScratchDatabase, free_port, running, service_env


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("LIFECYCLE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with embedded_server(data_dir() / "postgres") as embedded_url:
        yield embedded_url


async def create_database(server_url: str, name: str) -> ScratchDatabase:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {quote_identifier(name)}")
    finally:
        await conn.close()
    return ScratchDatabase(admin_url=with_database(server_url, name), name=name)


async def drop_database(server_url: str, database: ScratchDatabase) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(
            f"DROP DATABASE IF EXISTS {quote_identifier(database.name)} WITH (FORCE)"
        )
        for service in DEFINITIONS:
            role = service_role(database.admin_url, service)
            await conn.execute(f"DROP ROLE IF EXISTS {quote_identifier(role)}")
    finally:
        await conn.close()


@asynccontextmanager
async def migrated_database(server_url: str, prefix: str) -> AsyncIterator[ScratchDatabase]:
    """A database of its own, migrated, dropped with its roles at the end."""
    database = await create_database(server_url, f"{prefix}_{secrets.token_hex(4)}")
    try:
        await migrate(database.admin_url, schema_owners(database.admin_url, env={}))
        yield database
    finally:
        await drop_database(server_url, database)


@pytest.fixture(scope="session")
async def database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    """A database of its own for this test run."""
    async with migrated_database(server_url, "lifecycle_test") as database:
        yield database


@pytest.fixture(scope="module")
async def own_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    """A database for one test module alone: for tests that must see a table
    holding only their own rows."""
    async with migrated_database(server_url, "lifecycle_module") as database:
        yield database


@pytest.fixture(scope="session")
def suite_env(database: ScratchDatabase) -> dict[str, str]:
    """The session's users service, alone: its peers are at port 1, where nothing
    listens, so that its relay delivers nothing and the lifecycle events it
    writes stay in its outbox for the tests to read (a free port reserved for a
    peer could be bound later by another test's service)."""
    return service_env(database, {"users": free_port()})


@pytest.fixture(scope="session")
async def users_host(suite_env: dict[str, str]) -> AsyncIterator[ServiceHost]:
    async with running("users", suite_env) as host:
        yield host


@pytest.fixture(scope="session")
async def users(users_host: ServiceHost) -> AsyncIterator[users_pb2_grpc.UserServiceAsyncStub]:
    async with grpc.aio.insecure_channel(users_host.address) as channel:
        yield users_pb2_grpc.UserServiceStub(channel)


@pytest.fixture
async def admin(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database.admin_url)
    try:
        yield conn
    finally:
        await conn.close()
