"""`lifecycle demo` on a small scale: it starts the suite (or uses the one that
runs), sets up the product, replays its days and prints the funnel and the
daily metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from runtime.config import SERVICE_NAMES, with_database
from suite.certificates import local_certificates
from suite.cli import DEMO_LOG
from tests.conftest import create_database, drop_database, migrated_database
from tests.support import ScratchDatabase, free_port, running, service_env
from tests.test_cli import suite_environment

STAGE_ROWS = r"^(Acquisition|Activation|Retention|Revenue|Referral)\s+(\d+)"


@pytest.fixture
async def scratch(server_url: str) -> AsyncIterator[ScratchDatabase]:
    """The suite's database; the demo makes `<it>_demo` beside it, dropped too.
    On the tests' event loop, never blocking it: a DROP DATABASE waits for every
    backend of the server, and one writing to the servers other tests keep
    running on this loop waits until the loop reads."""
    name = f"lifecycle_demo_{secrets.token_hex(4)}"
    database = await create_database(server_url, name)
    demo = ScratchDatabase(with_database(server_url, f"{name}_demo"), f"{name}_demo")
    try:
        yield database
    finally:
        for made in (database, demo):
            await drop_database(server_url, made)


async def users_in(url: str) -> int | None:
    """How many users the database holds; None before its migrations."""
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('users.users') IS NOT NULL"):
            return None
        count: int = await conn.fetchval("SELECT count(*) FROM users.users")
        return count
    finally:
        await conn.close()


def funnel_of(out: str) -> dict[str, str]:
    """Users who entered each stage, from the demo's funnel table."""
    table = out.split("Stage funnel", 1)[1].split("Users per stage now", 1)[0]
    return dict(re.findall(STAGE_ROWS, table, re.M))


async def test_the_demo_replays_a_product_and_reports_its_funnel(
    scratch: ScratchDatabase, tmp_path: Path
) -> None:
    env = suite_environment(
        LIFECYCLE_DATABASE_URL=scratch.admin_url, LIFECYCLE_DATA_DIR=str(tmp_path)
    )
    for name in ("USERS", "WORKFLOWS", "SEGMENTS", "TRIGGERS", "METRICS"):
        env[f"LIFECYCLE_{name}_ADDRESS"] = f"127.0.0.1:{env[f'LIFECYCLE_{name}_PORT']}"
    out, err = await demo_output(
        ["demo", "--users", "150", "--days", "5", "--day-seconds", "0.4"], env, timeout=300
    )
    assert "starting the suite for the demo" in out
    funnel = funnel_of(out)
    assert funnel["Acquisition"] == "150"
    assert int(funnel["Activation"]) > 0
    daily = re.findall(r"^\d{4}-\d{2}-\d{2}\s+(\d+)", out, re.M)
    assert len(daily) == 5
    assert sum(int(signups) for signups in daily) == 150
    totals = dict(
        re.findall(r"^(workflow executions started|triggers fired): ([\d,]+)$", out, re.M)
    )
    assert int(totals["triggers fired"].replace(",", "")) >= 150
    assert int(totals["workflow executions started"].replace(",", "")) >= 150
    # The services it started log to a file of the data folder: the terminal
    # shows the demo's own lines, and its report comes last.
    assert [line for line in (out + err).splitlines() if line.startswith("{")] == []
    assert re.fullmatch(r"[a-z ]+: [\d,]+", out.rstrip().splitlines()[-1])
    logs = (tmp_path / DEMO_LOG).read_text()
    assert f"(its logs: {tmp_path / DEMO_LOG})" in out
    assert all(f'"message": "{name} stopped"' in logs for name in SERVICE_NAMES)


async def demo_run(command: list[str], env: dict[str, str]) -> str:
    """What `lifecycle <command>` printed; fails the test if it fails."""
    out, _ = await demo_output(command, env)
    return out


async def demo_output(
    command: list[str], env: dict[str, str], timeout: float = 120
) -> tuple[str, str]:
    """What `lifecycle <command>` printed on stdout and stderr; fails the test if it fails.
    It runs beside the event loop, which goes on serving the tests' servers."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "suite.cli", *command),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


async def test_the_demo_uses_the_suite_that_runs(own_database: ScratchDatabase) -> None:
    """With the five services up, the demo starts none of its own: its users land
    in the running suite's database, and it prints their funnel."""
    env = service_env(own_database, {name: free_port() for name in SERVICE_NAMES})
    command = ["demo", "--users", "1", "--days", "1", "--day-seconds", "0.1"]
    async with contextlib.AsyncExitStack() as suite:
        for name in SERVICE_NAMES:
            await suite.enter_async_context(running(name, env))
        printed = await demo_run(command, suite_environment(**env))
    assert "starting the suite" not in printed
    assert funnel_of(printed)["Acquisition"] == "1"
    assert await users_in(own_database.admin_url) == 1


async def test_the_demo_with_tls_calls_a_suite_under_mutual_tls(
    server_url: str, tmp_path: Path
) -> None:
    """`lifecycle demo --tls` calls the suite that runs under mutual TLS with the
    local CA's client certificate (`lifecycle up --tls`'s, in the data folder)."""
    certificates = local_certificates(tmp_path / "tls")
    ports = {name: free_port() for name in SERVICE_NAMES}
    command = ["demo", "--tls", "--users", "1", "--days", "1", "--day-seconds", "0.1"]
    async with (
        migrated_database(server_url, "lifecycle_demo_tls") as database,
        contextlib.AsyncExitStack() as suite,
    ):
        env = service_env(database, ports)
        for name in SERVICE_NAMES:
            await suite.enter_async_context(
                running(name, {**env, **certificates.environment(name)})
            )
        printed = await demo_run(
            command, suite_environment(**env, LIFECYCLE_DATA_DIR=str(tmp_path))
        )
        assert "starting the suite" not in printed
        assert await users_in(database.admin_url) == 1
