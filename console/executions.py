"""An execution: its diagram (the path taken, where it waits, its incidents),
variables, history, and the two actions, Retry (ResolveIncident) and Cancel
(CancelExecution), each a POST after a confirmation page."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from console.layout import drawable
from console.security import checked_form
from console.web import render, services
from lifecycle.workflows.v1 import workflows_pb2 as pb

# What an action tells the execution page it did (?done=...).
DONE = {"retried": "The incident was resolved: its job is tried again.", "cancelled": "Cancelled."}


async def _execution(request: Request) -> pb.Execution:
    reply = await services(request).workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=request.path_params["execution_id"])
    )
    return reply.execution


async def execution_page(request: Request) -> Response:
    execution = await _execution(request)
    found = await services(request).workflows.GetWorkflow(
        pb.GetWorkflowRequest(workflow_id=execution.workflow_id, version=execution.workflow_version)
    )
    return render(
        request,
        "execution.html",
        execution=execution,
        workflow=found.workflow,
        open_incidents=[i for i in execution.incidents if not i.resolved],
        done=DONE.get(request.query_params.get("done", ""), ""),
        running=execution.status in (pb.EXECUTION_STATUS_PENDING, pb.EXECUTION_STATUS_RUNNING),
    )


async def execution_diagram(request: Request) -> Response:
    """The execution's BPMN, the elements it completed, where it waits and its open incidents."""
    execution = await _execution(request)
    found = await services(request).workflows.GetWorkflow(
        pb.GetWorkflowRequest(workflow_id=execution.workflow_id, version=execution.workflow_version)
    )
    return JSONResponse(
        {
            "bpmn_xml": drawable(found.workflow.bpmn_xml),
            "completed": sorted(
                {s.element_id for s in execution.history if s.state == "completed"}
            ),
            "waiting": list(execution.current_node_ids),
            "incidents": sorted({i.element_id for i in execution.incidents if not i.resolved}),
        }
    )


def _incident(execution: pb.Execution, incident_id: str) -> pb.Incident:
    for incident in execution.incidents:
        if incident.id == incident_id and not incident.resolved:
            return incident
    raise HTTPException(404, "This execution has no open incident with that id.")


async def retry(request: Request) -> Response:
    """GET: asks to confirm; POST: resolves the incident, back to the execution."""
    if request.method == "POST":
        await checked_form(request)
    execution = await _execution(request)
    incident = _incident(execution, request.path_params["incident_id"])
    if request.method == "GET":
        return render(request, "confirm_retry.html", execution=execution, incident=incident)
    await services(request).workflows.ResolveIncident(
        pb.ResolveIncidentRequest(incident_id=incident.id)
    )
    return RedirectResponse(f"/executions/{execution.id}?done=retried", status_code=303)


async def cancel(request: Request) -> Response:
    """GET: asks to confirm; POST: cancels the execution, back to it."""
    if request.method == "POST":
        await checked_form(request)
    execution = await _execution(request)
    if request.method == "GET":
        return render(request, "confirm_cancel.html", execution=execution)
    await services(request).workflows.CancelExecution(
        pb.CancelExecutionRequest(execution_id=execution.id)
    )
    return RedirectResponse(f"/executions/{execution.id}?done=cancelled", status_code=303)


ROUTES = [
    Route("/executions/{execution_id}", execution_page),
    Route("/executions/{execution_id}/diagram.json", execution_diagram),
    Route(
        "/executions/{execution_id}/incidents/{incident_id}/retry", retry, methods=["GET", "POST"]
    ),
    Route("/executions/{execution_id}/cancel", cancel, methods=["GET", "POST"]),
]
