"""Workflows: the list, and a version's page (its diagram with the counts of
GetWorkflowStatistics on each element, and its executions)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.layout import drawable
from console.users import lookup
from console.web import render, services
from lifecycle.workflows.v1 import workflows_pb2 as pb

PAGE_SIZE = 50
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


async def _executions(request: Request, workflow_id: str) -> pb.ListExecutionsResponse:
    status = request.query_params.get("status", "")
    if status and status not in EXECUTION_STATUSES:
        raise HTTPException(400, f"There is no execution status {status!r}.")
    user = request.query_params.get("user", "").strip()
    return await services(request).workflows.ListExecutions(
        pb.ListExecutionsRequest(
            workflow_id=workflow_id,
            user_id=await _user_id(request, user) if user else "",
            statuses=[EXECUTION_STATUSES[status]] if status else [],
            page_size=PAGE_SIZE,
            page_token=request.query_params.get("page_token", ""),
        )
    )


async def workflow_page(request: Request) -> Response:
    workflow_id = request.path_params["workflow_id"]
    version = request.query_params.get("version", "")
    found = await services(request).workflows.GetWorkflow(
        pb.GetWorkflowRequest(workflow_id=workflow_id, version=version)
    )
    counted = await services(request).workflows.GetWorkflowStatistics(
        pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id, version=found.workflow.version)
    )
    listed = await _executions(request, workflow_id)
    return render(
        request,
        "workflow.html",
        workflow=found.workflow,
        elements=counted.elements,
        executions=listed.executions,
        next_page_token=listed.next_page_token,
        statuses=list(EXECUTION_STATUSES),
        status=request.query_params.get("status", ""),
        user=request.query_params.get("user", ""),
    )


async def workflow_diagram(request: Request) -> Response:
    """The version's BPMN and its counts per element, for the page's script."""
    workflow_id = request.path_params["workflow_id"]
    version = request.query_params.get("version", "")
    stub = services(request).workflows
    found = await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow_id, version=version))
    counted = await stub.GetWorkflowStatistics(
        pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id, version=found.workflow.version)
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
