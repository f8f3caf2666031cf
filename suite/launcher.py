"""`lifecycle up`: every service in its own process, supervised.

The children run in their own sessions, so Ctrl-C reaches only the
supervisor, which then stops them in order: SIGTERM, a grace period, SIGKILL
for stragglers. On Linux the children also die with the supervisor if it is
killed outright (PR_SET_PDEATHSIG).

A service that exits on its own once the suite is up is started again, as a
process manager would: after 1 s, doubling up to 30 s while it keeps failing,
and after 1 s again once it had stayed up a minute. It is never given up on:
what keeps a service from starting (another process on its port, say) may
go away, so it is tried every 30 s, its log saying why, and the rest of the
suite keeps serving; only Ctrl-C or SIGTERM stops the suite. A service that
fails while the suite starts stops the start instead. (A service whose
database is down does not exit: it runs, NOT_SERVING, until it is back.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from console.config import CONSOLE, load_console_config
from console.serve import until_answering, url_of
from runtime.config import (
    PAGE_TOKEN_SECRET,
    SERVICE_NAMES,
    TlsConfig,
    load_service_config,
    load_tls_config,
)
from runtime.tls import open_channel
from suite.certificates import CLIENT, LocalCertificates
from suite.database import data_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_TIMEOUT_SECONDS = 60.0
FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
# A service up this long has recovered: its next restart waits the first delay again.
STABLE_SECONDS = 60.0
PAGE_TOKEN_SECRET_FILE = "page-token-secret"  # noqa: S105 (a file name)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def serving(address: str, tls: TlsConfig | None) -> bool:
    """Whether a service answers SERVING at `address` now."""
    async with open_channel(address, tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _ready(address: str, process: asyncio.subprocess.Process, tls: TlsConfig | None) -> bool:
    """Waits until the service's readiness check answers SERVING (True) or its
    process exits (False)."""
    async with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while process.returncode is None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.2)
    return False


async def _wait_ready(
    address: str, ready: Awaitable[bool], process: asyncio.subprocess.Process
) -> None:
    """Until the service's readiness check (`ready`) answers; fails if the process
    exits or is not ready in time."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            if await ready:
                return
    except TimeoutError:
        raise RuntimeError(
            f"the service at {address} was not ready within {READY_TIMEOUT_SECONDS:.0f}s"
        ) from None
    raise RuntimeError(f"the service at {address} exited with code {process.returncode}")


class _Stopped(Exception):
    """The suite was asked to stop."""


async def _unless(stop: asyncio.Event, work: Awaitable[T]) -> T:
    """The result of `work`; _Stopped, with `work` cancelled, if `stop` comes first.
    (Racing rather than cancelling the supervisor's tasks leaves a service being
    started alone, so that the stop finds its process.)"""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        raise _Stopped
    return task.result()


def restart_delay(failures: int) -> float:
    """Seconds before the restart that follows `failures` exits in a row (1 or more)."""
    return min(MAX_RESTART_DELAY_SECONDS, FIRST_RESTART_DELAY_SECONDS * 2.0 ** (failures - 1))


class Supervisor:
    def __init__(
        self,
        services: Sequence[str],
        env: Mapping[str, str],
        certificates: LocalCertificates | None = None,
        log_file: Path | None = None,
    ) -> None:
        self._services = list(services)
        self._env = dict(env)
        # Where the services' output goes (appended); the terminal when None.
        self._log_file = log_file
        # Each service serves with a certificate of its own, when given them.
        self._certificates = certificates
        # How the supervisor itself calls the services (their health).
        self._tls = load_tls_config(self._env)
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._grace = load_service_config(SERVICE_NAMES[0], self._env).shutdown_grace

    async def run(self) -> int:
        """Runs the suite, restarting what exits, until Ctrl-C or SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with self.running():
            self._print_addresses()
            await asyncio.gather(*(self._keep_running(name, stop) for name in self._services))
        return 0

    async def _keep_running(self, name: str, stop: asyncio.Event) -> None:
        """Starts the service again each time it exits, with backoff, until `stop`."""
        loop = asyncio.get_running_loop()
        restarts = failures = 0
        with contextlib.suppress(_Stopped):
            while True:
                process = self._processes[name]
                started = loop.time()
                await _unless(stop, process.wait())
                failures = 1 if loop.time() - started >= STABLE_SECONDS else failures + 1
                restarts += 1
                delay = restart_delay(failures)
                print(
                    f"{name} exited with code {process.returncode};"
                    f" restarting in {delay:g}s (restart {restarts})",
                    flush=True,
                )
                await _unless(stop, asyncio.sleep(delay))
                process = await self._start(name)
                if await _unless(stop, self._ready(name, process)):
                    print(f"{name} is back", flush=True)

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
            await self._start(name)
        await asyncio.gather(
            *(
                _wait_ready(self._address(name), self._ready(name, process), process)
                for name, process in self._processes.items()
            )
        )

    async def _start(self, name: str) -> asyncio.subprocess.Process:
        with contextlib.ExitStack() as files:
            output = None
            if self._log_file is not None:
                # The child keeps its own copy of the descriptor.
                output = files.enter_context(self._log_file.open("ab"))
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "suite.cli",
                "serve",
                name,
                env=self._service_env(name),
                stdout=output,
                stderr=output,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._processes[name] = process
        return process

    def _service_env(self, name: str) -> dict[str, str]:
        # The console calls the services as the suite's client (self._env has its certificate).
        if self._certificates is None or name == CONSOLE:
            return self._env
        return {**self._env, **self._certificates.environment(name)}

    def _ready(self, name: str, process: asyncio.subprocess.Process) -> Awaitable[bool]:
        """Whether the process became ready: the console answers HTTP, services their health."""
        if name == CONSOLE:
            return until_answering(load_console_config(self._env), process)
        return _ready(self._address(name), process, self._tls)

    def _address(self, name: str) -> str:
        if name == CONSOLE:
            return url_of(load_console_config(self._env))
        config = load_service_config(name, self._env)
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host  # noqa: S104
        return f"{host}:{config.port}"

    def _print_addresses(self) -> None:
        lines = [f"  {name:<10} {self._address(name)}" for name in self._services]
        if self._tls is not None:
            lines += _tls_lines(self._tls, self._address(self._services[0]))
        if self._env.get("LIFECYCLE_AUTH_JWKS_FILE"):
            lines.append(
                'calls need a token: add -H "authorization: Bearer $(lifecycle token)"'
                " (see lifecycle token --help)"
            )
        print(
            "lifecycle-ops is up; the services listen on:",
            *lines,
            "Press Ctrl-C to stop.",
            sep="\n",
            flush=True,
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


def _tls_lines(tls: TlsConfig, address: str) -> list[str]:
    """How to call the suite with grpcurl, with the supervisor's own TLS settings."""
    flags = [f"-cacert {tls.ca_file}"] if tls.ca_file else []
    if tls.cert_file and tls.key_file:
        flags += [f"-cert {tls.cert_file}", f"-key {tls.key_file}"]
    mode = "mutual TLS" if tls.client_auth else "TLS"
    return [f"over {mode}; for example:", f"  grpcurl {' '.join(flags)} {address} list"]


def child_environment(
    admin_url: str, certificates: LocalCertificates | None = None
) -> dict[str, str]:
    """The environment of the services `lifecycle up` starts. It runs them here,
    for this machine's user: without LIFECYCLE_PAGE_TOKEN_SECRET they share the
    key kept in the data folder, made the first time, so that page tokens
    outlive a restart. With the local CA's `certificates`, they are called as
    its client (the person's certificate); each serves with its own."""
    secret = os.environ.get(PAGE_TOKEN_SECRET) or kept_secret(data_dir() / PAGE_TOKEN_SECRET_FILE)
    tls = {} if certificates is None else certificates.environment(CLIENT)
    return {**os.environ, "LIFECYCLE_DATABASE_URL": admin_url, PAGE_TOKEN_SECRET: secret, **tls}


def kept_secret(path: Path) -> str:
    """The secret in `path`, made (readable by its owner only) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)
    return secret
