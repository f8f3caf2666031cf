"""What security costs: GetUser and TrackEvent under mutual TLS with a bearer
token, beside the same calls in plaintext without authentication, in one run.

    python -m bench.security_bench    # --calls 10000 --concurrency 64 --rounds 3

Two suites of users and triggers run side by side on one database: one
plaintext and open, one under mutual TLS with authentication on (the
services know each other by their certificates; the client presents the
local client certificate and a token of the local key). The client keeps one
channel and one token per suite, as a real client does, so a token is
verified once. The two are timed in turns, `--rounds` of each; the figure is
the secured rate beside the plain one of the same round (target: at least 70%).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    Measurement,
    closed_loop,
    scratch_database,
    server_url,
    start_process,
    wait_serving,
)
from bench.triggers_bench import bench_event, load_users
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.config import load_tls_config
from runtime.tls import open_channel
from suite.certificates import CLIENT, LocalCertificates, local_certificates
from suite.keys import LocalAuth, local_auth
from tests.support import free_port

SERVICES = ("users", "triggers")
TARGET = 0.70


@dataclass
class Side:
    """One suite as its client sees it."""

    name: str
    users: Any
    triggers: Any
    metadata: tuple[tuple[str, str], ...]


def _ports() -> dict[str, int]:
    return {name: free_port() for name in SERVICES}


def _environment(database_url: str, ports: dict[str, int], health: int) -> dict[str, str]:
    env = {
        "LIFECYCLE_DATABASE_URL": database_url,
        "LIFECYCLE_LOG_LEVEL": "ERROR",
        "LIFECYCLE_DB_POOL_SIZE": "20",
        "LIFECYCLE_HEALTH_PORT": str(health),
    }
    for name, port in ports.items():
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(port)
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    return env


@contextlib.asynccontextmanager
async def suite(
    name: str,
    database_url: str,
    secured: tuple[LocalAuth, LocalCertificates] | None,
) -> AsyncIterator[Side]:
    ports = _ports()
    processes = []
    client_env: dict[str, str] = {}
    metadata: tuple[tuple[str, str], ...] = ()
    try:
        for service in SERVICES:
            health = free_port()
            env = _environment(database_url, ports, health)
            if secured is not None:
                auth, certificates = secured
                env |= auth.environment() | certificates.environment(service)
            processes.append(start_process(["-m", "suite.cli", "serve", service], env))
            await wait_serving(f"127.0.0.1:{health}")
        if secured is not None:
            auth, certificates = secured
            client_env = certificates.environment(CLIENT)
            token = auth.token("bench", ["*"], 3600)
            metadata = (("authorization", f"Bearer {token}"),)
        tls = load_tls_config(client_env)
        async with (
            open_channel(f"127.0.0.1:{ports['users']}", tls) as users,
            open_channel(f"127.0.0.1:{ports['triggers']}", tls) as triggers,
        ):
            yield Side(
                name,
                users_pb2_grpc.UserServiceStub(users),
                triggers_pb2_grpc.TriggerServiceStub(triggers),
                metadata,
            )
    finally:
        for process in processes:
            process.terminate()
            process.wait()


def get_user(side: Side, ids: list[str]) -> Callable[[int], Awaitable[object]]:
    async def call(n: int) -> object:
        request = users_pb2.GetUserRequest(user_id=random.choice(ids))
        return await side.users.GetUser(request, metadata=side.metadata)

    return call


def track_event(side: Side, ids: list[str]) -> Callable[[int], Awaitable[object]]:
    async def call(n: int) -> object:
        event = bench_event(random.choice(ids), "bench.signup", n)
        request = triggers_pb2.TrackEventRequest(event=event)
        return await side.triggers.TrackEvent(request, metadata=side.metadata)

    return call


async def in_turns(
    label: str,
    sides: tuple[Side, Side],
    make: Callable[[Side, list[str]], Callable[[int], Awaitable[object]]],
    ids: list[str],
    calls: int,
    concurrency: int,
    rounds: int,
) -> list[float]:
    """Each round times the plain side, then the secured one; the ratios."""
    ratios = []
    for side in sides:
        await closed_loop("warm-up", make(side, ids), 1000, concurrency)
    for round_ in range(1, rounds + 1):
        plain, secured = [
            await closed_loop(f"{label} {side.name}", make(side, ids), calls, concurrency)
            for side in sides
        ]
        ratios.append(secured.rate / plain.rate)
        _report(round_, plain, secured)
    return ratios


def _report(round_: int, plain: Measurement, secured: Measurement) -> None:
    print(f"round {round_}: {plain.line()}")
    print(f"         {secured.line(plain)}  (target >= {TARGET:.0%})")


async def main(calls: int, concurrency: int, rounds: int) -> None:
    with server_url() as url, tempfile.TemporaryDirectory() as folder:
        secured = (local_auth(Path(folder)), local_certificates(Path(folder) / "tls"))
        async with scratch_database(url) as database_url:
            ids = await load_users(database_url, 20_000)
            async with (
                suite("plaintext", database_url, None) as plain,
                suite("mtls+jwt", database_url, secured) as guarded,
            ):
                print(f"security, {calls} calls at concurrency {concurrency}, {rounds} rounds")
                reads = await in_turns(
                    "GetUser", (plain, guarded), get_user, ids, calls, concurrency, rounds
                )
                tracks = await in_turns(
                    "TrackEvent", (plain, guarded), track_event, ids, calls, concurrency, rounds
                )
    for label, ratios in (("GetUser", reads), ("TrackEvent", tracks)):
        median = sorted(ratios)[len(ratios) // 2]
        print(f"{label}: secured at {median:.1%} of plaintext (median of {rounds} rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.concurrency, arguments.rounds))
