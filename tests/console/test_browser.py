"""The console in headless Chromium (Debian's, driven by Playwright): the
diagrams are drawn with their counts, Retry works, no page logs an error, and
the stored payloads never run. One browser for the session."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from playwright.async_api import Page

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from suite.demo.catalog import bpmn
from tests.console.browsing import no_errors
from tests.console.conftest import SCRIPT, Console, new_incident
from tests.console.diagrams import ELEMENTS, flow_nodes
from tests.support import eventually

pytestmark = pytest.mark.browser


async def _visit(page: Page, url: str) -> None:
    await page.goto(url)
    assert await page.evaluate("window.__xss") is None


async def test_the_workflow_diagram_shows_the_counts_of_the_api(
    page: Page, console_url: str, console_suite: Console
) -> None:
    workflow = console_suite.seeded.workflow
    with no_errors(page):
        await _visit(page, f"{console_url}/workflows/{workflow.id}")
        await page.wait_for_selector("#diagram[data-drawn=true]")
        for element_id, *_ in ELEMENTS:
            assert await page.locator(f'svg [data-element-id="{element_id}"]').count() == 1
        counted = await console_suite.workflows.GetWorkflowStatistics(
            pb.GetWorkflowStatisticsRequest(workflow_id=workflow.id, version=workflow.version)
        )
        listed = await console_suite.workflows.ListExecutions(
            pb.ListExecutionsRequest(workflow_id=workflow.id)
        )
        for element in counted.elements:
            counts = page.locator(f'.counts[data-element="{element.element_id}"]')
            waiting = sum(element.element_id in e.current_node_ids for e in listed.executions)
            assert await counts.locator(".active").inner_text() == str(waiting)
            assert await counts.locator(".completed").inner_text() == str(element.completed)
            shown = await counts.locator(".incidents").all_inner_texts()
            assert shown == ([str(element.incidents)] if element.incidents else [])
        assert await page.locator('[data-element-id="work"].has-incident').count() == 1
        assert await page.evaluate("window.__xss") is None


async def test_a_workflow_without_a_diagram_is_laid_out_and_drawn(
    page: Page, console_url: str, console_suite: Console
) -> None:
    document = bpmn("onboarding", 1.0)
    created = await console_suite.workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name="demo onboarding", bpmn_xml=document))
    )
    with no_errors(page):
        await _visit(page, f"{console_url}/workflows/{created.workflow.id}")
        await page.wait_for_selector("#diagram[data-drawn=true]")
        for element_id in flow_nodes(document):
            assert await page.locator(f'svg [data-element-id="{element_id}"]').count() == 1


async def test_retry_on_an_execution_resolves_its_incident(
    page: Page, console_url: str, console_suite: Console
) -> None:
    execution_id, incident_id = await new_incident(console_suite.workflows)
    with no_errors(page):
        await _visit(page, f"{console_url}/executions/{execution_id}")
        await page.wait_for_selector("#diagram[data-drawn=true]")
        assert await page.locator('[data-element-id="start"].completed').count() == 1
        assert await page.locator('[data-element-id="work"].waiting.has-incident').count() == 1
        await page.get_by_role("link", name="Retry…").click()
        await page.get_by_role("button", name="Retry").click()
        await page.wait_for_selector("p.done")
        assert await page.evaluate("window.__xss") is None
    after = await console_suite.workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=execution_id)
    )
    assert [(i.id, i.resolved) for i in after.execution.incidents] == [(incident_id, True)]


async def _signed_up_today(console_suite: Console) -> None:
    """A user created now, rolled up into today's metrics."""
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    metrics = metrics_pb2_grpc.MetricsServiceStub(console_suite.channels["metrics"])
    await users.CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com"))
    )
    today = datetime.now(UTC).date().isoformat()

    async def rolled_up() -> bool:
        await metrics.RunRollup(metrics_pb2.RunRollupRequest(start_date=today, end_date=today))
        reply = await metrics.GetMetrics(
            metrics_pb2.GetMetricsRequest(
                metric_names=["users_created"], start_date=today, end_date=today
            )
        )
        return any(point.value for series in reply.series for point in series.points)

    await eventually(rolled_up)


async def test_the_overview_draws_its_charts(
    page: Page, console_url: str, console_suite: Console
) -> None:
    await _signed_up_today(console_suite)
    with no_errors(page):
        await _visit(page, console_url)
        await page.wait_for_selector("#charts[data-drawn=true]")
        # Drawn by Chart.js, not replaced by "No data in this range."
        assert await page.locator("canvas#chart-users").count() == 1
        assert await page.locator("canvas#chart-entries").count() == 1


async def test_every_page_loads_without_errors(
    page: Page, console_url: str, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    # A condition on the event's data holding a payload, shown as a sentence and in the form.
    where = quote(json.dumps({"v": 1, "attr": "note", "src": "event", "op": "eq", "value": SCRIPT}))
    for path in (
        "/workflows",
        "/users",
        "/segments",
        "/triggers",
        f"/executions/{seeded.at_wait}/cancel",
        "/analytics",
        f"/analytics?step=user.created&step=tracked.login&where={where}&by=stage",
        f"/analytics/retention?cohort=user.created&return=tracked.login&return_where={where}",
    ):
        with no_errors(page):
            await _visit(page, f"{console_url}{path}")


async def test_the_event_funnel_draws_its_chart(
    page: Page, console_url: str, console_suite: Console
) -> None:
    await _signed_up_today(console_suite)
    with no_errors(page):
        await _visit(page, f"{console_url}/analytics?step=user.created&step=tracked.*&by=stage")
        await page.wait_for_selector("canvas#funnel-chart[data-drawn=true]")
        assert await page.locator("table.event-funnel tbody tr").count() == 2
