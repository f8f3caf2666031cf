"""Helpers the tests share: starting real services on loopback ports against a
real PostgreSQL database, and reading rich errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace import TracerProvider

from runtime.config import SERVICE_NAMES, ServiceConfig, load_service_config
from runtime.server import ServiceHost
from suite.registry import DEFINITIONS

T = TypeVar("T")


@dataclass(frozen=True)
class TestDatabase:
    admin_url: str
    name: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database: TestDatabase, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """The environment a service of the test suite runs with."""
    env = {
        "LIFECYCLE_DATABASE_URL": database.admin_url,
        "LIFECYCLE_SHUTDOWN_GRACE_SECONDS": "5",
        "LIFECYCLE_OUTBOX_POLL_SECONDS": "0.2",
        "LIFECYCLE_CALL_TIMEOUT_SECONDS": "2",
    }
    for name in SERVICE_NAMES:
        port = ports.get(name, 1)
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(port)
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    env.update(extra)
    return env


def service_config(service: str, env: dict[str, str]) -> ServiceConfig:
    return load_service_config(service, env)


@asynccontextmanager
async def running(
    service: str, env: dict[str, str], tracer_provider: TracerProvider | None = None
) -> AsyncIterator[ServiceHost]:
    """A real gRPC server of `service` in this process, stopped gracefully on exit."""
    host = ServiceHost(DEFINITIONS[service], service_config(service, env), tracer_provider)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call fails with; fails the test if it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded but was expected to fail")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("the error has no ErrorInfo")


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return [v.field for v in bad_request.field_violations]
    return []
