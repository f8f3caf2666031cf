"""The console's pages, rendered on the server against a real suite: what
they show, that stored payloads stay text, the security headers, CSRF, and
how failed calls read."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import httpx
import pytest

from console.app import create_app
from console.calls import Services
from console.config import load_console_config
from console.security import CONTENT_SECURITY_POLICY, CSRF_COOKIE, CSRF_FIELD
from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.console.conftest import IMAGE, PAYLOADS, SCRIPT, Console, new_incident
from tests.support import free_port


class _Markup(HTMLParser):
    """The tags of a page that could run something: scripts, images, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.images = 0
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs).get("src"))
        self.images += tag == "img"
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def inert(html: str) -> None:
    """No payload reached the page as markup: the scripts are the console's
    own files, and there is no image nor event handler."""
    markup = _Markup()
    markup.feed(html)
    assert all(src and src.startswith("/static/") for src in markup.scripts), markup.scripts
    assert markup.images == 0
    assert markup.handlers == []


async def page_of(client: httpx.AsyncClient, path: str, status: int = 200) -> str:
    reply = await client.get(path)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "Traceback" not in reply.text
    return reply.text


async def test_the_workflow_list_shows_each_workflow_escaped(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    html = await page_of(client, "/workflows")
    workflow = console_suite.seeded.workflow
    assert f'href="/workflows/{workflow.id}"' in html
    assert "onboarding &lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert ">active<" in html
    inert(html)


async def test_a_workflow_page_lists_its_executions_and_filters_them(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    html = await page_of(client, f"/workflows/{seeded.workflow.id}")
    for execution_id in (seeded.at_work, seeded.at_wait, seeded.failed):
        assert f"/executions/{execution_id}" in html
    assert "described &lt;img" in html
    assert 'data-source="/workflows/' in html
    assert re.search(r"<td>work</td><td class=\"number\">\d+</td>", html)
    inert(html)
    # The user filter is reflected back into the form, escaped.
    listed = await console_suite.workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=seeded.at_wait)
    )
    only = await page_of(client, f"/workflows/{seeded.workflow.id}?user={listed.execution.user_id}")
    assert f"/executions/{seeded.at_wait}" in only
    assert f"/executions/{seeded.at_work}" not in only
    reflected = await page_of(
        client, f"/workflows/{seeded.workflow.id}?status=completed&user=%3Cscript%3E", 400
    )
    assert "INVALID_ARGUMENT" in reflected
    inert(reflected)


async def test_the_diagram_data_has_the_statistics_of_the_version(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    workflow = console_suite.seeded.workflow
    reply = await client.get(f"/workflows/{workflow.id}/diagram.json?version={workflow.version}")
    assert reply.headers["content-type"] == "application/json"
    data = reply.json()
    assert data["bpmn_xml"] == workflow.bpmn_xml
    counted = await console_suite.workflows.GetWorkflowStatistics(
        pb.GetWorkflowStatisticsRequest(workflow_id=workflow.id, version=workflow.version)
    )
    assert data["elements"] == {
        e.element_id: {"active": e.active, "completed": e.completed, "incidents": e.incidents}
        for e in counted.elements
    }
    assert data["elements"]["work"]["incidents"] >= 1


async def test_an_execution_page_shows_its_incident_variables_and_history(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    html = await page_of(client, f"/executions/{seeded.failed}")
    assert f"/executions/{seeded.failed}/incidents/{seeded.incident_id}/retry" in html
    assert "failed &lt;script&gt;" in html
    assert "&#34;note&#34;: &#34;&lt;img" in html or "&quot;note&quot;" in html
    assert re.search(r'<span class="element">start</span>\s*<span class="type">', html)
    assert f"/executions/{seeded.failed}/cancel" in html
    inert(html)
    data = (await client.get(f"/executions/{seeded.failed}/diagram.json")).json()
    assert data == {
        "bpmn_xml": seeded.workflow.bpmn_xml,
        "completed": ["start"],
        "waiting": ["work"],
        "incidents": ["work"],
    }


async def test_an_action_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    path = f"/executions/{seeded.at_work}/cancel"
    await page_of(client, path)  # the confirmation page sets the cookie
    assert client.cookies.get(CSRF_COOKIE)
    for form, headers in (
        ({}, {}),
        ({CSRF_FIELD: "forged"}, {}),
        ({CSRF_FIELD: client.cookies[CSRF_COOKIE]}, {"origin": "https://elsewhere.example"}),
    ):
        reply = await client.post(path, data=form, headers=headers)
        assert reply.status_code == 403
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    still = await console_suite.workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=seeded.at_work)
    )
    assert still.execution.status == pb.EXECUTION_STATUS_RUNNING


async def test_the_confirmation_page_carries_the_token_and_retry_resolves(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    execution_id, incident_id = await new_incident(console_suite.workflows)
    path = f"/executions/{execution_id}/incidents/{incident_id}/retry"
    html = await page_of(client, path)
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert token is not None and token.group(1) == client.cookies[CSRF_COOKIE]
    reply = await client.post(path, data={CSRF_FIELD: token.group(1)})
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/executions/{execution_id}?done=retried"
    after = await console_suite.workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=execution_id)
    )
    assert [i.resolved for i in after.execution.incidents] == [True]
    # Resolved, it can no longer be retried.
    assert "no open incident" in await page_of(client, path, 404)


async def test_the_overview_shows_stages_funnel_and_open_incidents(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    html = await page_of(client, "/?start=2030-01-01&end=2030-01-07")
    assert "Stage funnel, 2030-01-01 to 2030-01-07" in html
    for stage in ("acquisition", "activation", "retention", "revenue", "referral"):
        assert f"<td>{stage}</td>" in html
    workflow = console_suite.seeded.workflow
    assert f'href="/workflows/{workflow.id}?version=' in html  # its open incident
    inert(html)
    charts = (await client.get("/metrics.json?start=2030-01-01&end=2030-01-03")).json()
    assert charts["days"] == ["2030-01-01", "2030-01-02", "2030-01-03"]
    assert set(charts["charts"]) == {"users", "entries", "conversions"}
    assert "YYYY-MM-DD" in await page_of(client, "/?start=yesterday", 400)


async def test_failed_calls_read_as_messages(client: httpx.AsyncClient) -> None:
    missing = await page_of(client, f"/workflows/{uuid.uuid4()}", 404)
    assert "NOT_FOUND" in missing
    malformed = await page_of(client, "/executions/not-an-id", 400)
    assert "INVALID_ARGUMENT" in malformed
    assert "<code>execution_id</code>" in malformed


async def test_a_service_that_is_down_reads_as_unavailable(console_suite: Console) -> None:
    env = {**console_suite.env, "LIFECYCLE_WORKFLOWS_ADDRESS": f"127.0.0.1:{free_port()}"}
    config = load_console_config(env)
    calls = Services(config)
    try:
        transport = httpx.ASGITransport(app=create_app(config, calls))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            html = await page_of(client, "/workflows", 503)
    finally:
        await calls.close()
    assert "UNAVAILABLE" in html


async def test_static_files_and_health_carry_the_policy_too(client: httpx.AsyncClient) -> None:
    for path in ("/static/console.css", "/static/vendor/bpmn-viewer.production.min.js", "/healthz"):
        reply = await client.get(path)
        assert reply.status_code == 200
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({"LIFECYCLE_HOST": "0.0.0.0"}, "127.0.0.1"),
        ({"LIFECYCLE_HOST": "0.0.0.0", "LIFECYCLE_AUTH_JWKS_URL": "https://idp/jwks"}, "0.0.0.0"),
        ({"LIFECYCLE_HOST": "0.0.0.0", "LIFECYCLE_CONSOLE_HOST": "10.0.0.7"}, "10.0.0.7"),
    ],
)
def test_without_authentication_it_listens_on_loopback_only(env: dict[str, str], host: str) -> None:
    assert load_console_config(env).host == host


def test_the_payloads_are_what_the_pages_escape() -> None:
    # The XSS payloads hold the markup that `inert` looks for.
    assert SCRIPT in PAYLOADS["incident"] and IMAGE in PAYLOADS["incident"]
