"""`lifecycle demo` on a small scale: it starts the suite, sets up the product,
replays its days and prints the funnel and the daily metrics."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest

from runtime.config import with_database
from tests.conftest import create_database, drop_database
from tests.support import ScratchDatabase
from tests.test_cli import suite_environment


@pytest.fixture
def scratch(server_url: str) -> Iterator[ScratchDatabase]:
    """The suite's database; the demo makes `<it>_demo` beside it, dropped too."""
    name = f"lifecycle_demo_{secrets.token_hex(4)}"
    database = asyncio.run(create_database(server_url, name))
    demo = ScratchDatabase(with_database(server_url, f"{name}_demo"), f"{name}_demo")
    try:
        yield database
    finally:
        for made in (database, demo):
            asyncio.run(drop_database(server_url, made))


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


def test_the_demo_replays_a_product_and_reports_its_funnel(scratch: ScratchDatabase) -> None:
    env = suite_environment(LIFECYCLE_DATABASE_URL=scratch.admin_url)
    for name in ("USERS", "WORKFLOWS", "SEGMENTS", "TRIGGERS", "METRICS"):
        env[f"LIFECYCLE_{name}_ADDRESS"] = f"127.0.0.1:{env[f'LIFECYCLE_{name}_PORT']}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "suite.cli",
            "demo",
            "--users",
            "150",
            "--days",
            "5",
            "--day-seconds",
            "0.4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "starting the suite for the demo" in out
    funnel_table = out.split("Stage funnel", 1)[1].split("Users per stage now", 1)[0]
    stage_rows = r"^(Acquisition|Activation|Retention|Revenue|Referral)\s+(\d+)"
    funnel = dict(re.findall(stage_rows, funnel_table, re.M))
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
