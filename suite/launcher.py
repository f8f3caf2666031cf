"""`lifecycle up`: every service in its own process, supervised.

The children run in their own sessions, so Ctrl-C reaches only the
supervisor, which then stops them in order: SIGTERM, a grace period, SIGKILL
for stragglers. On Linux the children also die with the supervisor if it is
killed outright (PR_SET_PDEATHSIG). When one child dies, the suite stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.config import load_service_config

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def serving(address: str) -> bool:
    """Whether a service answers SERVING at `address` now."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _wait_ready(address: str, process: asyncio.subprocess.Process) -> None:
    """Until the service's readiness check answers SERVING; fails if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_SECONDS
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"the service at {address} exited with code {process.returncode}"
                )
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() > deadline:
                raise RuntimeError(
                    f"the service at {address} was not ready within {READY_TIMEOUT_SECONDS:.0f}s"
                )
            await asyncio.sleep(0.2)


class Supervisor:
    def __init__(self, services: Sequence[str], env: Mapping[str, str]) -> None:
        self._services = list(services)
        self._env = dict(env)
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._grace = load_service_config(self._services[0], self._env).shutdown_grace

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with self.running():
            self._print_addresses()
            exited = asyncio.create_task(self._first_exit())
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            failed = exited in done
            for task in (exited, stopping):
                task.cancel()
            if failed:
                log.error("a service exited on its own; stopping the suite")
            return 1 if failed else 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The services started and ready for the block, stopped after it."""
        try:
            await self._start_all()
            yield
        finally:
            await self._stop_all()

    async def _start_all(self) -> None:
        for name in self._services:
            self._processes[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "suite.cli",
                "serve",
                name,
                env=self._env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        await asyncio.gather(
            *(
                _wait_ready(self._address(name), process)
                for name, process in self._processes.items()
            )
        )

    def _address(self, name: str) -> str:
        config = load_service_config(name, self._env)
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host  # noqa: S104
        return f"{host}:{config.port}"

    def _print_addresses(self) -> None:
        lines = [f"  {name:<10} {self._address(name)}" for name in self._services]
        print(
            "lifecycle-ops is up; the services listen on:",
            *lines,
            "Press Ctrl-C to stop.",
            sep="\n",
            flush=True,
        )

    async def _first_exit(self) -> None:
        await asyncio.wait(
            [asyncio.create_task(p.wait()) for p in self._processes.values()],
            return_when=asyncio.FIRST_COMPLETED,
        )

    async def _stop_all(self) -> None:
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        _, late = await asyncio.wait(
            [asyncio.create_task(p.wait()) for p in running], timeout=self._grace + 5
        )
        if late:
            for process in running:
                if process.returncode is None:
                    log.warning("killing service process %d after the grace period", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))


def child_environment(admin_url: str) -> dict[str, str]:
    return {**os.environ, "LIFECYCLE_DATABASE_URL": admin_url}
