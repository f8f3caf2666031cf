"""Workflows: the list, and a version's page (its diagram with the counts of
GetWorkflowStatistics on each element, and its executions)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.layout import drawable
from console.users import lookup
from console.web import render, services
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import set_timestamp

PAGE_SIZE = 50
VERSIONS_PAGE_SIZE = 20
# The executions table's filters, as the page's query names them.
FILTERS = ("status", "user", "started_from", "started_to")
# The statuses a person may filter executions by, as the API names them.
EXECUTION_STATUSES = {
    name.removeprefix("EXECUTION_STATUS_").lower(): value
    for name, value in pb.ExecutionStatus.items()
    if value != pb.EXECUTION_STATUS_UNSPECIFIED
}


async def workflow_list(request: Request) -> Response:
    reply = await services(request).workflows.ListWorkflows(
        pb.ListWorkflowsRequest(
            page_size=PAGE_SIZE, page_token=request.query_params.get("page_token", "")
        )
    )
    return render(
        request, "workflows.html", workflows=reply.workflows, next_page_token=reply.next_page_token
    )


async def _user_id(request: Request, given: str) -> str:
    """A user filter as the API takes it: an email is looked up (NOT_FOUND shows as such)."""
    if "@" not in given:
        return given
    return (await services(request).users.GetUser(lookup(given))).user.id


def _day(request: Request, name: str) -> date | None:
    given = request.query_params.get(name, "")
    try:
        return date.fromisoformat(given) if given else None
    except ValueError:
        raise HTTPException(400, f"{name}: dates are written YYYY-MM-DD.") from None


def _started_between(request: Request, listing: pb.ListExecutionsRequest) -> None:
    """?started_from=&started_to= (days, both included, UTC) as the API's
    started_after and started_before."""
    first, last = _day(request, "started_from"), _day(request, "started_to")
    if first is not None and last is not None and last < first:
        raise HTTPException(400, "started_to: the range ends before it starts.")
    if first is not None:
        set_timestamp(listing.started_after, datetime.combine(first, time(), UTC))
    if last is not None:
        set_timestamp(
            listing.started_before, datetime.combine(last + timedelta(days=1), time(), UTC)
        )


async def _executions(request: Request, workflow_id: str) -> pb.ListExecutionsResponse:
    status = request.query_params.get("status", "")
    if status and status not in EXECUTION_STATUSES:
        raise HTTPException(400, f"There is no execution status {status!r}.")
    user = request.query_params.get("user", "").strip()
    listing = pb.ListExecutionsRequest(
        workflow_id=workflow_id,
        user_id=await _user_id(request, user) if user else "",
        statuses=[EXECUTION_STATUSES[status]] if status else [],
        page_size=PAGE_SIZE,
        page_token=request.query_params.get("page_token", ""),
    )
    _started_between(request, listing)
    return await services(request).workflows.ListExecutions(listing)


async def workflow_page(request: Request) -> Response:
    workflow_id = request.path_params["workflow_id"]
    version = request.query_params.get("version", "")
    stub = services(request).workflows
    # Independent calls, made at once: the page takes as long as the slowest.
    found, counted, listed, versions = await asyncio.gather(
        stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow_id, version=version)),
        stub.GetWorkflowStatistics(
            pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id, version=version)
        ),
        _executions(request, workflow_id),
        stub.ListWorkflowVersions(
            pb.ListWorkflowVersionsRequest(
                workflow_id=workflow_id,
                page_size=VERSIONS_PAGE_SIZE,
                page_token=request.query_params.get("versions_token", ""),
            )
        ),
    )
    return render(
        request,
        "workflow.html",
        workflow=found.workflow,
        elements=counted.elements,
        executions=listed.executions,
        next_page_token=listed.next_page_token,
        versions=versions.versions,
        versions_token=versions.next_page_token,
        statuses=list(EXECUTION_STATUSES),
        filters={name: request.query_params.get(name, "") for name in FILTERS},
    )


async def workflow_diagram(request: Request) -> Response:
    """The version's BPMN and its counts per element, for the page's script."""
    workflow_id = request.path_params["workflow_id"]
    version = request.query_params.get("version", "")
    stub = services(request).workflows
    found, counted = await asyncio.gather(
        stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow_id, version=version)),
        stub.GetWorkflowStatistics(
            pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id, version=version)
        ),
    )
    return JSONResponse(
        {
            "bpmn_xml": drawable(found.workflow.bpmn_xml),
            "elements": {
                e.element_id: {
                    "active": e.active,
                    "completed": e.completed,
                    "incidents": e.incidents,
                }
                for e in counted.elements
            },
        }
    )


ROUTES = [
    Route("/workflows", workflow_list),
    Route("/workflows/{workflow_id}", workflow_page),
    Route("/workflows/{workflow_id}/diagram.json", workflow_diagram),
]
