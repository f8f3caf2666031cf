"""Screenshots of the overview, a workflow with its overlays and an execution,
over a product loaded into a suite of this module's own
(`tests/console/product.py`: the demo's workflows, 600 users). `make
screenshots` writes them to docs/images/ for the README (LIFECYCLE_SCREENSHOTS
names the folder); otherwise they go to a temporary folder, and the test still
checks each page drew what it shows."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from console.calls import Services
from console.config import load_console_config
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.config import peer_addresses
from suite.demo.clients import connected
from suite.registry import DEFINITIONS
from tests.conftest import migrated_database
from tests.console.browsing import no_errors, served
from tests.console.product import load
from tests.support import free_port, service_env, whole_suite

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1200, "height": 760}
# Small enough to take seconds, large enough for the counts and charts to show something.
USERS = 600


@dataclass(frozen=True)
class Demo:
    url: str
    workflows: workflows_pb2_grpc.WorkflowServiceAsyncStub


@pytest.fixture(scope="module")
async def demo(server_url: str) -> AsyncIterator[Demo]:
    """The console over a suite holding the product."""
    async with migrated_database(server_url, "lifecycle_screens") as database:
        env = service_env(
            database,
            {name: free_port() for name in DEFINITIONS},
            LIFECYCLE_CONSOLE_PORT=str(free_port()),
            LIFECYCLE_WORKFLOWS_POLL_SECONDS="0.2",
            LIFECYCLE_LOG_LEVEL="ERROR",
        )
        async with (
            whole_suite(env) as channels,
            connected(peer_addresses(env), None) as suite,
        ):
            await load(suite, database.admin_url, USERS)
            config = load_console_config(env)
            services = Services(config)
            try:
                async with served(config, services) as url:
                    yield Demo(url, workflows_pb2_grpc.WorkflowServiceStub(channels["workflows"]))
            finally:
                await services.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("LIFECYCLE_SCREENSHOTS")
    return Path(named) if named else tmp_path_factory.mktemp("screenshots")


async def _shoot(page: Page, url: str, ready: str, path: Path, *, whole: bool = False) -> None:
    """The page once `ready` shows: the viewport, or the `whole` page."""
    with no_errors(page):
        await page.goto(url)
        await page.wait_for_selector(ready)
        await page.screenshot(path=path, animations="disabled", full_page=whole)
    # A PNG as wide as the viewport: its signature, then IHDR's width and height.
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width == VIEWPORT["width"]
    assert height > VIEWPORT["height"] if whole else height == VIEWPORT["height"]


async def _onboarding(workflows: workflows_pb2_grpc.WorkflowServiceAsyncStub) -> pb.Workflow:
    listed = await workflows.ListWorkflows(pb.ListWorkflowsRequest(page_size=100))
    return next(w for w in listed.workflows if w.name.startswith("Onboarding"))


async def test_screenshots_of_the_overview_a_workflow_and_an_execution(
    browser: Browser, demo: Demo, folder: Path
) -> None:
    onboarding = await _onboarding(demo.workflows)
    latest = await demo.workflows.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=onboarding.id, page_size=1)
    )
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        await _shoot(
            page, demo.url, "#charts[data-drawn=true]", folder / "overview.png", whole=True
        )
        await _shoot(
            page,
            f"{demo.url}/workflows/{onboarding.id}",
            "#diagram[data-drawn=true] .counts .completed",
            folder / "workflow.png",
        )
        await _shoot(
            page,
            f"{demo.url}/executions/{latest.executions[0].id}",
            "#diagram[data-drawn=true] .djs-element.completed",
            folder / "execution.png",
        )
    finally:
        await context.close()
