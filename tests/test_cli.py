"""The `lifecycle` command as a new user runs it: `up` starts every service in
its own process and Ctrl-C stops all of them (and an embedded PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import psutil
import pytest
from cryptography import x509

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.config import SERVICE_NAMES, load_tls_config, with_database
from runtime.tls import open_channel, spiffe_id
from suite.certificates import CLIENT, LocalCertificates
from suite.database import EMBEDDED_LOG
from suite.launcher import PAGE_TOKEN_SECRET_FILE, kept_secret, serving
from tests.conftest import create_database, drop_database
from tests.support import (
    ScratchDatabase,
    free_port,
    migration_count,
    rpc_error,
    serve_and_fail,
    starts_waiting_for_workflows,
)
from tests.test_tls import served_certificate

pytestmark = pytest.mark.users

STARTUP_SECONDS = 90
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def lifecycle(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "suite.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def suite_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    for name in SERVICE_NAMES:
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(free_port())
    env["LIFECYCLE_CONSOLE_PORT"] = str(free_port())
    env["LIFECYCLE_SHUTDOWN_GRACE_SECONDS"] = "3"
    env.update(extra)
    return env


def read_until_up(process: subprocess.Popen[str]) -> list[str]:
    """Lines printed until the suite says it is up; fails if it exits first."""
    return read_until(process, "Press Ctrl-C", STARTUP_SECONDS)


def interrupt_and_check_nothing_is_left(
    process: subprocess.Popen[str], services: int, sig: signal.Signals = signal.SIGINT
) -> None:
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= services
    process.send_signal(sig)
    assert process.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"orphans left behind: {alive}"


@pytest.fixture
async def scratch_url(server_url: str) -> AsyncIterator[str]:
    """On the tests' event loop (see tests/test_demo.py `scratch`)."""
    database = await create_database(server_url, f"lifecycle_up_{secrets.token_hex(4)}")
    try:
        yield database.admin_url
    finally:
        await drop_database(server_url, database)


def test_up_runs_every_service_in_its_own_process_and_ctrl_c_stops_them(scratch_url: str) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url)
    process = lifecycle("up", env=env)
    try:
        lines = read_until_up(process)
        for name in SERVICE_NAMES:
            assert f"  {name:<10} 127.0.0.1:{env[f'LIFECYCLE_{name.upper()}_PORT']}" in lines
        console = f"http://127.0.0.1:{env['LIFECYCLE_CONSOLE_PORT']}"
        assert f"  console    {console}" in lines
        services = [p for p in psutil.Process(process.pid).children() if "serve" in p.cmdline()]
        assert sorted(p.cmdline()[-1] for p in services) == sorted([*SERVICE_NAMES, "console"])
        # The console is a client of the services: its workflows page lists theirs.
        assert "<h1>Workflows</h1>" in httpx.get(f"{console}/workflows").text
        interrupt_and_check_nothing_is_left(process, len(SERVICE_NAMES) + 1)
    finally:
        if process.poll() is None:
            process.kill()


def test_up_without_a_database_url_starts_and_stops_an_embedded_postgresql(tmp_path: Path) -> None:
    env = suite_environment(LIFECYCLE_DATA_DIR=str(tmp_path))
    env.pop("XDG_RUNTIME_DIR", None)  # what makes platformdirs warn, as on a bare machine
    process = lifecycle("up", "users", env=env)
    try:
        printed = read_until_up(process)
        postgres = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "no embedded PostgreSQL runs in the data folder"
        interrupt_and_check_nothing_is_left(process, 1)
        _, alive = psutil.wait_procs(postgres, timeout=15)
        assert alive == [], "the embedded PostgreSQL was left running"
        assert process.stdout is not None
        printed += process.stdout.read().splitlines()  # down to the server's stop
    finally:
        if process.poll() is None:
            process.kill()
    # The library's own chatter (its pg_ctl runs and their output) goes to its
    # log in the data folder; the terminal shows the suite's lines only.
    chatter = ("pg_ctl", "initdb", "Running commandline", "RuntimeDirWarning", "XDG_RUNTIME_DIR")
    assert [line for line in printed if any(word in line for word in chatter)] == []
    assert "pg_ctl" in (tmp_path / EMBEDDED_LOG).read_text()


def test_migrate_and_maintenance_commands(scratch_url: str) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url)
    first = subprocess.run(
        [sys.executable, "-m", "suite.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert f"{migration_count()} applied" in first.stderr
    again = subprocess.run(
        [sys.executable, "-m", "suite.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "0 applied" in again.stderr
    maintenance = subprocess.run(
        [sys.executable, "-m", "suite.cli", "maintenance"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert maintenance.returncode == 0, maintenance.stderr
    assert "metrics: expired 0 idempotency keys" in maintenance.stdout
    assert "segments: forgot 0 erased users" in maintenance.stdout
    lines = maintenance.stdout.splitlines()
    assert {line.split(": ", 1)[0] for line in lines} == set(SERVICE_NAMES), lines
    doubled = [line for line in lines if line.split(": ", 2)[1] in SERVICE_NAMES]
    assert doubled == [], "each line names its service once"


def test_migrate_creates_the_database_it_is_pointed_at(server_url: str) -> None:
    name = f"lifecycle_new_{secrets.token_hex(4)}"
    env = suite_environment(LIFECYCLE_DATABASE_URL=with_database(server_url, name))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "suite.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    finally:
        asyncio.run(
            drop_database(server_url, ScratchDatabase(with_database(server_url, name), name))
        )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIFECYCLE_USERS_PORT", "eighty"),
        ("LIFECYCLE_LOG_LEVEL", "LOUD"),
        ("LIFECYCLE_DATABASE_URL", "mysql://x"),
    ],
)
def test_a_bad_setting_stops_the_service_with_a_message_naming_it(
    variable: str, value: str
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL="postgresql://localhost/x")
    env[variable] = value
    result = serve_and_fail("users", env)
    assert result.returncode == 2
    assert variable in result.stderr and repr(value) in result.stderr


def test_outbox_command_lists_pending_messages_and_sends_dead_letters_again(
    scratch_url: str,
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url)
    lifecycle_command = [sys.executable, "-m", "suite.cli"]
    migrated = subprocess.run(
        [*lifecycle_command, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr

    async def bury_one() -> None:
        conn = await asyncpg.connect(scratch_url)
        try:
            await conn.execute(
                "INSERT INTO users.outbox_dead_letters"
                " (id, topic, payload, created_at, attempts, last_error)"
                " VALUES (1, 'metrics.record_events', '', now(), 10, 'INVALID_ARGUMENT: bad')"
            )
        finally:
            await conn.close()

    asyncio.run(bury_one())
    listed = subprocess.run(
        [*lifecycle_command, "outbox"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "users: dead metrics.record_events: 1 messages" in listed.stdout
    retried = subprocess.run(
        [*lifecycle_command, "outbox", "retry", "--service", "users"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retried.returncode == 0, retried.stderr
    assert "users: 1 dead letters sent again" in retried.stdout
    assert "users: pending metrics.record_events: 1 messages" in retried.stdout


def read_until(process: subprocess.Popen[str], text: str, seconds: float = 60) -> list[str]:
    """The suite's output up to the line that holds `text`; fails if it exits first."""
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if text in line:
            return lines
    raise AssertionError(f"the suite never said {text!r}:\n" + "\n".join(lines))


def service_processes(process: subprocess.Popen[str]) -> dict[str, psutil.Process]:
    children = psutil.Process(process.pid).children()
    return {p.cmdline()[-1]: p for p in children if "serve" in p.cmdline()}


def test_up_restarts_a_service_that_dies_and_sigterm_stops_the_suite(
    scratch_url: str, tmp_path: Path
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url, LIFECYCLE_DATA_DIR=str(tmp_path))
    process = lifecycle("up", "users", "metrics", env=env)
    try:
        read_until_up(process)
        first = service_processes(process)
        metrics = first["metrics"]
        first["users"].kill()
        read_until(process, "users exited with code -9; restarting in 1s (restart 1)")
        read_until(process, "users is back")
        again = service_processes(process)
        assert again["users"].pid != first["users"].pid
        address = f"127.0.0.1:{env['LIFECYCLE_USERS_PORT']}"
        assert asyncio.run(serving(address, None))
        # Dying again at once, it waits longer; the other service runs on untouched.
        again["users"].kill()
        read_until(process, "users exited with code -9; restarting in 2s (restart 2)")
        read_until(process, "users is back")
        assert asyncio.run(serving(address, None))
        assert metrics.is_running() and service_processes(process)["metrics"].pid == metrics.pid
        interrupt_and_check_nothing_is_left(process, 2, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()


def test_up_keeps_a_page_token_secret_in_its_data_folder_for_its_services(
    scratch_url: str, tmp_path: Path
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url, LIFECYCLE_DATA_DIR=str(tmp_path))
    process = lifecycle("up", "users", env=env)
    try:
        read_until_up(process)
        kept = tmp_path / PAGE_TOKEN_SECRET_FILE
        assert kept.stat().st_mode & 0o777 == 0o600
        users = service_processes(process)["users"]
        assert users.environ()["LIFECYCLE_PAGE_TOKEN_SECRET"] == kept.read_text()
        assert len(kept.read_text()) >= 32
        interrupt_and_check_nothing_is_left(process, 1)
    finally:
        if process.poll() is None:
            process.kill()
    assert kept_secret(kept) == kept.read_text(), "the next run uses the same key"


def test_serve_refuses_to_start_without_a_page_token_secret() -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL="postgresql://localhost/x")
    result = serve_and_fail("users", env)
    assert result.returncode == 2
    assert "LIFECYCLE_PAGE_TOKEN_SECRET is not set" in result.stderr


def run_lifecycle(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "suite.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_outbox_and_archive_list_say_when_nothing_waits_or_was_archived(scratch_url: str) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url)
    run_lifecycle("migrate", env=env)
    assert run_lifecycle("outbox", env=env).stdout == "nothing waiting\n"
    assert run_lifecycle("archive", "list", env=env).stdout == "no archives\n"


def test_outbox_shows_the_workflow_starts_that_wait_for_the_workflows_service(
    scratch_url: str,
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url)
    run_lifecycle("migrate", env=env)

    asyncio.run(starts_waiting_for_workflows(scratch_url))
    listed = run_lifecycle("outbox", "--service", "triggers", env=env).stdout
    [line] = listed.splitlines()
    assert line.startswith("triggers: pending workflows.start_execution: 2 messages, oldest ")
    assert line.endswith(", UNAVAILABLE: the workflows service is down")


async def user_created_reaches_metrics(
    env: dict[str, str], client: dict[str, str], token: str
) -> None:
    """A user made in the users service, and its event in the metrics service's
    log: the users service's outbox relays it to metrics (as users, by its
    certificate). Without the token the call is refused."""
    tls = load_tls_config(client)
    bearer = (("authorization", f"Bearer {token}"),)
    users_address = f"127.0.0.1:{env['LIFECYCLE_USERS_PORT']}"
    metrics_address = f"127.0.0.1:{env['LIFECYCLE_METRICS_PORT']}"
    async with (
        open_channel(users_address, tls) as users_channel,
        open_channel(metrics_address, tls) as metrics_channel,
    ):
        users = users_pb2_grpc.UserServiceStub(users_channel)
        request = users_pb2.CreateUserRequest(user=users_pb2.User(email="tls@example.com"))
        refused = await rpc_error(users.CreateUser(request, timeout=5))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        created = await users.CreateUser(request, timeout=5, metadata=bearer)
        metrics = metrics_pb2_grpc.MetricsServiceStub(metrics_channel)
        for _ in range(150):
            listed = await metrics.ListEvents(
                metrics_pb2.ListEventsRequest(user_id=created.user.id), timeout=5, metadata=bearer
            )
            if [event.event_type for event in listed.events] == ["user.created"]:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the user's event never reached the metrics service")


def test_up_with_tls_and_auth_runs_the_suite_secured_with_a_local_ca_and_keys(
    scratch_url: str, tmp_path: Path
) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch_url, LIFECYCLE_DATA_DIR=str(tmp_path))
    # The services call each other on these ports (their defaults are taken by other runs).
    for name in SERVICE_NAMES:
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = (
            f"127.0.0.1:{env[f'LIFECYCLE_{name.upper()}_PORT']}"
        )
    process = lifecycle("up", "--tls", "--auth", env=env)
    try:
        lines = read_until_up(process)
        files = LocalCertificates(tmp_path / "tls")
        assert files.key_file("ca").stat().st_mode & 0o777 == 0o600
        client = files.environment(CLIENT)
        for name in SERVICE_NAMES:
            port = int(env[f"LIFECYCLE_{name.upper()}_PORT"])
            address = f"127.0.0.1:{port}"
            assert asyncio.run(serving(address, load_tls_config(client))), name
            assert not asyncio.run(serving(address, None)), f"{name} answers in plaintext"
            served = served_certificate(port, files)
            uris = served.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert uris.value.get_values_for_type(x509.UniformResourceIdentifier) == [
                spiffe_id(name)
            ]
        assert any("authorization: Bearer $(lifecycle token)" in line for line in lines)
        token = run_lifecycle(
            "token", "--permissions", "users:write,metrics:read", "--ttl", "10m", env=env
        ).stdout.strip()
        asyncio.run(user_created_reaches_metrics(env, client, token))
        # The command it prints works as printed.
        [grpcurl] = [line.strip() for line in lines if line.strip().startswith("grpcurl ")]
        listed = subprocess.run(
            [GRPCURL, *grpcurl.split()[1:]], capture_output=True, text=True, timeout=30
        )
        assert "lifecycle.users.v1.UserService" in listed.stdout, listed.stderr
        interrupt_and_check_nothing_is_left(process, len(SERVICE_NAMES))
    finally:
        if process.poll() is None:
            process.kill()
