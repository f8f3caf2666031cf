"""The console with the keyboard alone: on each page Tab reaches every link,
field and button, each showing where the focus is, and a person goes from the
overview to an incident, retries it, and cancels an execution, pressing only
Tab, arrows, letters and Enter."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from playwright.async_api import Locator, Page

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import dict_to_struct
from tests.console.browsing import no_errors
from tests.console.conftest import Console, new_incident

pytestmark = pytest.mark.browser

# More Tab stops than any page of the test's data has.
MOST_STOPS = 200
ACTIONABLE = "a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]"

# Each element that can take the focus, numbered in document order; then the
# focus goes back to the document, where the first Tab starts.
_NUMBER = f"""() => {{
  const shown = [...document.querySelectorAll({ACTIONABLE!r})]
    .filter((e) => e.getClientRects().length > 0 && e.tabIndex >= 0);
  shown.forEach((e, i) => {{ e.dataset.stop = String(i); }});
  document.activeElement?.blur();
  return shown.length;
}}"""
# The focused element: its number and whether an outline shows it.
_FOCUSED = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  const style = getComputedStyle(e);
  return {
    stop: e.dataset.stop ?? e.outerHTML.slice(0, 80),
    what: e.outerHTML.slice(0, 60),
    outlined: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0,
  };
}"""


async def _tab_stops(page: Page) -> tuple[int, list[dict[str, Any]]]:
    """How many elements can take the focus, and where Tab goes, once round the page."""
    count: int = await page.evaluate(_NUMBER)
    stops: list[dict[str, Any]] = []
    for _ in range(MOST_STOPS):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(_FOCUSED)
        if focused is None or (stops and focused["stop"] == stops[0]["stop"]):
            break
        stops.append(focused)
    return count, stops


async def _tab_to(page: Page, target: Locator) -> None:
    """Presses Tab until `target` has the focus."""
    for _ in range(MOST_STOPS):
        await page.keyboard.press("Tab")
        if await target.evaluate("(e) => e === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")


async def _explained_segment(console_suite: Console) -> str:
    """The page of a new segment explained for a new user."""
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    segments = segments_pb2_grpc.SegmentServiceStub(console_suite.channels["segments"])
    user = await users.CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com"))
    )
    condition = {"v": 1, "attr": "plan", "op": "exists"}
    created = await segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(name="planned", conditions=dict_to_struct(condition))
        )
    )
    return f"/segments/{created.segment.id}?explain={user.user.id}"


async def test_tab_reaches_every_action_of_each_page_with_its_focus_shown(
    page: Page, console_url: str, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    explained = await _explained_segment(console_suite)
    for path in (
        "/",
        "/workflows",
        f"/workflows/{seeded.workflow.id}",
        f"/executions/{seeded.failed}",
        f"/executions/{seeded.failed}/incidents/{seeded.incident_id}/retry",
        f"/executions/{seeded.at_wait}/cancel",
        "/users",
        "/segments",
        explained,
        "/triggers",
        "/analytics?step=user.created&step=tracked.*&by=stage",
        "/analytics/retention?cohort=user.created&return=tracked.login",
    ):
        with no_errors(page):
            await page.goto(f"{console_url}{path}")
            await page.wait_for_load_state("networkidle")
            count, stops = await _tab_stops(page)
        # A date field takes one Tab per part (day, month, year): each stop counts once.
        assert sorted({int(s["stop"]) for s in stops}) == list(range(count)), path
        assert [s["what"] for s in stops if not s["outlined"]] == [], path


async def test_retry_and_cancel_with_the_keyboard_alone(
    page: Page, console_url: str, console_suite: Console
) -> None:
    execution_id, incident_id = await new_incident(console_suite.workflows)
    execution = (
        await console_suite.workflows.GetExecution(
            pb.GetExecutionRequest(execution_id=execution_id)
        )
    ).execution
    with no_errors(page):
        await page.goto(console_url)
        await _tab_to(page, page.get_by_role("link", name="Workflows", exact=True))
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{console_url}/workflows")
        await _tab_to(page, page.locator(f'a[href="/workflows/{execution.workflow_id}"]'))
        await page.keyboard.press("Enter")
        await page.wait_for_selector("form.filters")
        # The filters: a status chosen with the arrows, a user typed, then Filter.
        status = page.locator('select[name="status"]')
        await _tab_to(page, status)
        while await status.input_value() != "running":
            await page.keyboard.press("ArrowDown")
        await _tab_to(page, page.locator('input[name="user"]'))
        await page.keyboard.type(execution.user_id)
        await _tab_to(page, page.get_by_role("button", name="Filter"))
        await page.keyboard.press("Enter")
        await page.wait_for_url("**status=running**")
        await _tab_to(page, page.locator(f'a[href="/executions/{execution_id}"]'))
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#diagram[data-drawn=true]")

        await _tab_to(page, page.get_by_role("link", name="Retry…"))
        await page.keyboard.press("Enter")
        await _tab_to(page, page.get_by_role("button", name="Retry"))
        await page.keyboard.press("Enter")
        await page.wait_for_selector("p.done")

        await _tab_to(page, page.get_by_role("link", name="Cancel this execution…"))
        await page.keyboard.press("Enter")
        await _tab_to(page, page.get_by_role("link", name="Back"))
        await page.keyboard.press("Enter")
        await _tab_to(page, page.get_by_role("link", name="Cancel this execution…"))
        await page.keyboard.press("Enter")
        await _tab_to(page, page.get_by_role("button", name="Cancel the execution"))
        await page.keyboard.press("Enter")
        await page.wait_for_selector("p.done")
    after = await console_suite.workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=execution_id)
    )
    assert [(i.id, i.resolved) for i in after.execution.incidents] == [(incident_id, True)]
    assert after.execution.status == pb.EXECUTION_STATUS_CANCELLED


async def test_a_funnel_built_and_sent_with_the_keyboard_alone(
    page: Page, console_url: str
) -> None:
    with no_errors(page):
        await page.goto(console_url)
        await _tab_to(page, page.get_by_role("link", name="Analytics", exact=True))
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{console_url}/analytics")
        steps = page.locator('input[name="step"]')
        for number, event_type in enumerate(("user.created", "tracked.*")):
            await _tab_to(page, steps.nth(number))
            await page.keyboard.type(event_type)
        order = page.locator('select[name="order"]')
        await _tab_to(page, order)
        while await order.input_value() != "any":
            await page.keyboard.press("ArrowDown")
        await _tab_to(page, page.get_by_role("button", name="Show the funnel"))
        await page.keyboard.press("Enter")
        await page.wait_for_selector("canvas#funnel-chart[data-drawn=true]")
    assert "order=any" in page.url
    assert await page.locator("table.event-funnel tbody tr").count() == 2
