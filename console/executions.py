"""An execution: its diagram (the path taken, where it waits, its incidents),
what it waits on now (timers, messages, signals, jobs, user tasks), variables,
history, and the two actions, Retry (ResolveIncident) and Cancel
(CancelExecution), each a POST after a confirmation page."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
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
WAITS_PAGE_SIZE = 100
_EVENT_PLACES = {
    pb.EVENT_WAIT_KIND_INTERMEDIATE: "catch event",
    pb.EVENT_WAIT_KIND_BOUNDARY: "boundary event",
    pb.EVENT_WAIT_KIND_EVENT_SUBPROCESS: "event sub-process",
    pb.EVENT_WAIT_KIND_RECEIVE_TASK: "receive task",
    pb.EVENT_WAIT_KIND_START: "start event",
}
_JOB_STATES = {
    pb.JOB_STATE_READY: "ready",
    pb.JOB_STATE_ACTIVATED: "locked by a worker",
    pb.JOB_STATE_FAILED: "failed: an incident",
}
_TASK_STATES = {pb.USER_TASK_STATE_CREATED: "open", pb.USER_TASK_STATE_ASSIGNED: "assigned"}


@dataclass(frozen=True)
class WaitLine:
    """One thing the execution waits on, as the timeline shows it."""

    kind: str
    element_id: str
    label: str
    # Named times (due, since, lock expires, next attempt) and named values.
    moments: list[tuple[str, Timestamp]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)


def _event_label(what: str, kind: pb.EventWaitKind.ValueType, interrupting: bool) -> str:
    place = _EVENT_PLACES.get(kind, "event")
    return f"{what} ({place}{', interrupting' if interrupting else ''})"


def _set(moments: list[tuple[str, Timestamp]], name: str, holder: Message, attribute: str) -> None:
    """Adds the holder's timestamp `attribute` under `name`, if it is set."""
    if holder.HasField(attribute):
        moments.append((name, getattr(holder, attribute)))


def wait_line(wait: pb.ExecutionWait) -> WaitLine:
    which = wait.WhichOneof("wait")
    element = wait.element_id
    if which == "timer":
        timer = wait.timer
        label = _event_label("timer", timer.kind, timer.interrupting)
        return WaitLine("timer", element, label, [("due", timer.due_time)])
    if which == "message":
        message = wait.message
        line = WaitLine(
            "message",
            element,
            _event_label("message", message.kind, message.interrupting),
            facts=[("name", message.message_name), ("correlation key", message.correlation_key)],
        )
        _set(line.moments, "since", message, "create_time")
        return line
    if which == "signal":
        signal = wait.signal
        line = WaitLine(
            "signal",
            element,
            _event_label("signal", signal.kind, signal.interrupting),
            facts=[("name", signal.signal_name)],
        )
        _set(line.moments, "since", signal, "create_time")
        return line
    if which == "job":
        return _job_line(element, wait.job)
    task = wait.user_task
    facts = [("state", _TASK_STATES.get(task.state, "open"))]
    if task.assignee:
        facts.append(("assignee", task.assignee))
    line = WaitLine("user-task", element, "user task", facts=facts)
    _set(line.moments, "since", task, "create_time")
    _set(line.moments, "due", task, "due_time")
    return line


def _job_line(element: str, job: pb.JobWait) -> WaitLine:
    facts = [
        ("type", job.job_type),
        ("state", _JOB_STATES.get(job.state, "ready")),
        ("retries left", str(job.retries)),
    ]
    if job.failures:
        facts.append(("failed attempts", str(job.failures)))
    if job.worker:
        facts.append(("worker", job.worker))
    if job.error_message:
        facts.append(("last error", job.error_message))
    line = WaitLine("job", element, "job", facts=facts)
    _set(line.moments, "lock expires", job, "lock_expire_time")
    _set(line.moments, "next attempt", job, "next_attempt_time")
    return line


async def _execution(request: Request) -> pb.Execution:
    reply = await services(request).workflows.GetExecution(
        pb.GetExecutionRequest(execution_id=request.path_params["execution_id"])
    )
    return reply.execution


async def execution_page(request: Request) -> Response:
    execution = await _execution(request)
    workflows = services(request).workflows
    found, waits = await asyncio.gather(
        workflows.GetWorkflow(
            pb.GetWorkflowRequest(
                workflow_id=execution.workflow_id, version=execution.workflow_version
            )
        ),
        workflows.ListExecutionWaits(
            pb.ListExecutionWaitsRequest(
                execution_id=execution.id,
                page_size=WAITS_PAGE_SIZE,
                page_token=request.query_params.get("waits_page", ""),
            )
        ),
    )
    return render(
        request,
        "execution.html",
        execution=execution,
        workflow=found.workflow,
        waits=[wait_line(w) for w in waits.waits],
        waits_next=waits.next_page_token,
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
