"""Behind an authenticating proxy: the console calls the services with the
person's bearer token, so a page shows what that person may see, and only that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from console.app import create_app
from console.calls import Services
from console.config import load_console_config
from suite.keys import LocalAuth, local_auth
from suite.registry import DEFINITIONS
from tests.support import ScratchDatabase, free_port, service_env, whole_suite


@pytest.fixture(scope="module")
async def secured(
    own_database: ScratchDatabase, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[LocalAuth, httpx.AsyncClient]]:
    """The five services checking tokens, and a console in front of them."""
    auth = local_auth(Path(tmp_path_factory.mktemp("auth")))
    env = service_env(
        own_database,
        {name: free_port() for name in DEFINITIONS},
        LIFECYCLE_LOG_LEVEL="ERROR",
        LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS="0",
        **auth.environment(),
    )
    config = load_console_config(env)
    assert config.authenticated
    async with whole_suite(env):
        calls = Services(config)
        transport = httpx.ASGITransport(app=create_app(config, calls))
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                yield auth, client
        finally:
            await calls.close()


async def test_a_person_without_a_token_sees_nothing(
    secured: tuple[LocalAuth, httpx.AsyncClient],
) -> None:
    _, client = secured
    reply = await client.get("/workflows")
    assert reply.status_code == 401
    assert "UNAUTHENTICATED" in reply.text


async def test_the_persons_token_is_what_the_services_judge(
    secured: tuple[LocalAuth, httpx.AsyncClient],
) -> None:
    auth, client = secured
    reader = auth.token("ada", ["workflows:read"], 600)
    allowed = await client.get("/workflows", headers={"authorization": f"Bearer {reader}"})
    assert allowed.status_code == 200
    assert "<h1>Workflows</h1>" in allowed.text
    stranger = auth.token("bob", ["users:read"], 600)
    refused = await client.get("/workflows", headers={"authorization": f"Bearer {stranger}"})
    assert refused.status_code == 403
    assert "PERMISSION_DENIED" in refused.text
    assert "workflows:read" in refused.text
