"""A workflow's page: its executions started between two days, and its
versions, each linking the page of that version (its diagram and counts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from google.protobuf import field_mask_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.console.conftest import Console
from tests.console.diagrams import job_then_message
from tests.console.test_pages import inert, page_of


async def test_the_executions_started_between_two_days(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    seeded = console_suite.seeded
    path = f"/workflows/{seeded.workflow.id}"
    today = datetime.now(UTC).date()
    ids = (seeded.at_work, seeded.at_wait, seeded.failed)
    shown = await page_of(client, f"{path}?started_from={today}&started_to={today}")
    assert all(f"/executions/{i}" in shown for i in ids)
    assert f'name="started_from" value="{today}"' in shown
    earlier = await page_of(client, f"{path}?started_to={today - timedelta(days=1)}")
    assert not any(f"/executions/{i}" in earlier for i in ids)
    assert "No executions match." in earlier
    later = await page_of(client, f"{path}?started_from={today + timedelta(days=1)}")
    assert "No executions match." in later
    backwards = await page_of(
        client, f"{path}?started_from={today}&started_to={today - timedelta(days=1)}", 400
    )
    assert "ends before it starts" in backwards
    garbled = await page_of(client, f"{path}?started_from=%3Cscript%3E", 400)
    inert(garbled)


async def test_the_page_lists_the_versions_and_links_each(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    workflows = console_suite.workflows
    created = await workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(
            workflow=pb.Workflow(name="versioned", bpmn_xml=job_then_message("v1", {}))
        )
    )
    first = (
        await workflows.ActivateWorkflow(
            pb.ActivateWorkflowRequest(workflow_id=created.workflow.id)
        )
    ).workflow
    second = (
        await workflows.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=pb.Workflow(id=first.id, bpmn_xml=job_then_message("v2", {})),
                update_mask=field_mask_pb2.FieldMask(paths=["bpmn_xml"]),
            )
        )
    ).workflow
    assert second.version != first.version
    html = await page_of(client, f"/workflows/{first.id}")
    assert f'<strong aria-current="page">{second.version}</strong>' in html
    link = f'href="/workflows/{first.id}?version={first.version}"'
    assert link in html
    assert html.index(second.version) < html.index(link)
    older = await page_of(client, f"/workflows/{first.id}?version={first.version}")
    assert f'<dd class="version">{first.version}</dd>' in older
    assert f'<strong aria-current="page">{first.version}</strong>' in older
    assert f'data-source="/workflows/{first.id}/diagram.json?version={first.version}"' in older
