"""gRPC entry point of the workflows service: validate, call the use case, map back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime import wire_checks
from runtime.deadlines import timeout_for_call
from runtime.errors import InvalidArgument, Violations
from runtime.idempotency import request_key
from runtime.isolation import content_error, refusal_text, refused_value
from runtime.pagination import PageTokens, parse_time_and_id, parse_time_and_text, time_and_id
from runtime.parsing import check_name, optional_time, parse_stages, parse_uuid, required_id
from runtime.stages import stage_value
from runtime.structs import dict_to_struct, timestamp
from services.workflows.definitions import BpmnError, WorkflowDirectory
from services.workflows.domain import (
    ACTIVE,
    ARCHIVED,
    BUILTIN_PREFIX,
    DRAFT,
    INACTIVE,
    ExecutionFilter,
    JobRecord,
    NewMessage,
    Published,
    VersionRow,
    WorkflowFields,
    WorkflowRecord,
    job_key,
)
from services.workflows.executions import Executions
from services.workflows.jobs import Jobs
from services.workflows.servicer_campaigns import RECENT_CYCLES, cycle_message
from services.workflows.servicer_signals import SignalRpcs
from services.workflows.servicer_starts import (
    EXECUTION_STATUSES,
    StartRpcs,
    execution_message,
    variables_of,
)
from services.workflows.servicer_user_tasks import UserTaskRpcs
from services.workflows.servicer_waits import WaitRpcs
from services.workflows.signals import Signals
from services.workflows.user_tasks import UserTasks
from services.workflows.waits import ExecutionWaits

Context = grpc.aio.ServicerContext[Any, Any]

WORKFLOW_STATUSES = {
    pb.WORKFLOW_STATUS_DRAFT: DRAFT,
    pb.WORKFLOW_STATUS_ACTIVE: ACTIVE,
    pb.WORKFLOW_STATUS_INACTIVE: INACTIVE,
    pb.WORKFLOW_STATUS_ARCHIVED: ARCHIVED,
}
_WORKFLOW_ENUM = {name: value for value, name in WORKFLOW_STATUSES.items()}
UPDATABLE = ("name", "description", "bpmn_xml", "lifecycle_stages")
MAX_TTL = timedelta(days=365)
MAX_MESSAGES = 1000
MAX_JOBS = 1000
DEFAULT_JOB_TIMEOUT = timedelta(minutes=5)
MAX_JOB_TIMEOUT = timedelta(days=30)
MAX_RETRY_BACKOFF = timedelta(days=30)
MAX_REQUEST_TIMEOUT = timedelta(minutes=10)
INVALID_MESSAGE = "INVALID_MESSAGE"
INTERNAL_ERROR = "INTERNAL"
JOB_POLL_SECONDS = 0.5
LONG_POLL_MARGIN_SECONDS = 0.5


def workflow_message(workflow: WorkflowRecord) -> pb.Workflow:
    return pb.Workflow(
        id=str(workflow.id),
        name=workflow.name,
        description=workflow.description,
        bpmn_xml=workflow.bpmn_xml,
        version=workflow.version,
        lifecycle_stages=[stage_value(s) for s in workflow.stages],
        status=_WORKFLOW_ENUM[workflow.status],
        created_by=str(workflow.created_by or ""),
        create_time=timestamp(workflow.created_at),
        update_time=timestamp(workflow.updated_at),
    )


def _duration(
    value: duration_pb2.Duration, field: str, violations: Violations, maximum: timedelta
) -> timedelta:
    delta = value.ToTimedelta()
    if delta < timedelta(0):
        violations.add(field, "must not be negative")
    elif delta > maximum:
        violations.add(field, f"must be at most {_spoken(maximum)}")
    return delta


def _spoken(delta: timedelta) -> str:
    if delta.days:
        return f"{delta.days} days"
    return f"{delta.seconds // 60} minutes"


def _statuses(values: list[int], names: dict[Any, str], field: str, v: Violations) -> list[str]:
    found = []
    for position, value in enumerate(values):
        if value not in names:
            v.add(f"{field}[{position}]", f"{value} is not a status")
        else:
            found.append(names[value])
    return sorted(set(found))


def _message(
    request: pb.PublishMessageRequest, prefix: str, violations: Violations
) -> NewMessage | None:
    """A message to publish (None without a user); problems go to `violations`
    under `prefix` + the field's name."""
    name = check_name(request.name, f"{prefix}name", violations)
    key: str | None = None
    if request.user_id:
        # A correlation key within the user (zeebe:subscription correlationKey).
        user_id = parse_uuid(request.user_id, f"{prefix}user_id", violations)
        key = check_name(request.correlation_key, f"{prefix}correlation_key", violations)
        key = None if user_id is not None and key == str(user_id) else key
    else:
        user_id = parse_uuid(request.correlation_key, f"{prefix}correlation_key", violations)
    variables = variables_of(request.variables, f"{prefix}variables", violations)
    message_id = check_name(request.message_id, f"{prefix}message_id", violations, required=False)
    ttl = _duration(request.time_to_live, f"{prefix}time_to_live", violations, MAX_TTL)
    if user_id is None:
        return None
    return NewMessage(name, user_id, message_id or None, variables, ttl, key)


def _published(published: Published) -> pb.PublishMessageResponse:
    if published.error is not None:
        reason = INVALID_MESSAGE if refused_value(published.error) else INTERNAL_ERROR
        error = pb.MessageError(
            field="message", message=refusal_text(published.error), reason=reason
        )
        return pb.PublishMessageResponse(error=error)
    return pb.PublishMessageResponse(
        delivered_count=published.delivered,
        buffered=published.buffered,
        duplicate=published.duplicate,
    )


def _invalid_message(violations: Violations) -> pb.PublishMessageResponse:
    first = violations.items[0]
    error = pb.MessageError(
        field=first.field,
        message="; ".join(v.description for v in violations.items),
        reason=INVALID_MESSAGE,
    )
    return pb.PublishMessageResponse(error=error)


class WorkflowServicer(
    StartRpcs, UserTaskRpcs, SignalRpcs, WaitRpcs, workflows_pb2_grpc.WorkflowServiceServicer
):
    def __init__(
        self,
        directory: WorkflowDirectory,
        executions: Executions,
        jobs: Jobs,
        page_tokens: PageTokens,
        user_tasks: UserTasks,
        *,
        signals: Signals,
        waits: ExecutionWaits,
    ) -> None:
        self._signals = signals
        self._waits = waits
        self._directory = directory
        self._executions = executions
        self._jobs = jobs
        self._tokens = page_tokens
        self._user_tasks = user_tasks

    def _version(self, bpmn_xml: str, violations: Violations) -> VersionRow | None:
        if not bpmn_xml.strip():
            violations.add("workflow.bpmn_xml", "is required")
            return None
        try:
            return self._directory.version_row(bpmn_xml)
        except BpmnError as error:
            for problem in error.problems:
                violations.add("workflow.bpmn_xml", problem.describe())
            return None

    # ------------------------------------------------------------ definitions

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: Context
    ) -> pb.CreateWorkflowResponse:
        if not request.HasField("workflow"):
            raise InvalidArgument.field("workflow", "is required")
        given = request.workflow
        violations = Violations()
        name = check_name(given.name, "workflow.name", violations)
        stages = parse_stages(list(given.lifecycle_stages), "workflow.lifecycle_stages", violations)
        created_by = parse_uuid(given.created_by, "workflow.created_by", violations, required=False)
        key = request_key(request, "CreateWorkflow", violations)
        version = self._version(given.bpmn_xml, violations)
        violations.check()
        assert version is not None
        fields = WorkflowFields(name, given.description, given.bpmn_xml, stages, created_by)
        workflow = await self._directory.create(fields, version, key)
        return pb.CreateWorkflowResponse(workflow=workflow_message(workflow))

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Context
    ) -> pb.GetWorkflowResponse:
        workflow_id = required_id(request.workflow_id, "workflow_id")
        workflow = await self._directory.get(workflow_id, request.version.strip())
        cycles = await self._directory.campaign_cycles(workflow_id, RECENT_CYCLES)
        return pb.GetWorkflowResponse(
            workflow=workflow_message(workflow), campaign_cycles=map(cycle_message, cycles)
        )

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        violations = Violations()
        statuses = _statuses(list(request.statuses), WORKFLOW_STATUSES, "statuses", violations)
        stages = sorted(
            parse_stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
        )
        violations.check()
        found, token = await self._tokens.read_page(
            request,
            [statuses, stages],
            lambda cursor, limit: self._directory.page(statuses, stages, cursor, limit),
            lambda w: time_and_id(w.created_at, w.id),
            parse_time_and_id,
        )
        return pb.ListWorkflowsResponse(
            workflows=[workflow_message(w) for w in found], next_page_token=token
        )

    async def ListWorkflowVersions(
        self, request: pb.ListWorkflowVersionsRequest, context: Context
    ) -> pb.ListWorkflowVersionsResponse:
        workflow_id = required_id(request.workflow_id, "workflow_id")
        found, token = await self._tokens.read_page(
            request,
            [str(workflow_id)],
            lambda cursor, limit: self._directory.versions(workflow_id, cursor, limit),
            lambda v: [v.created_at.isoformat(), v.version],
            parse_time_and_text,
        )
        return pb.ListWorkflowVersionsResponse(
            versions=[
                pb.WorkflowVersion(version=v.version, create_time=timestamp(v.created_at))
                for v in found
            ],
            next_page_token=token,
        )

    async def UpdateWorkflow(
        self, request: pb.UpdateWorkflowRequest, context: Context
    ) -> pb.UpdateWorkflowResponse:
        given = request.workflow
        violations = Violations()
        workflow_id = parse_uuid(given.id, "workflow.id", violations)
        paths = set(request.update_mask.paths)
        if not request.HasField("update_mask"):
            paths = {p for p in UPDATABLE if p != "lifecycle_stages" and getattr(given, p)}
            paths |= {"lifecycle_stages"} if given.lifecycle_stages else set()
        for path in sorted(paths - set(UPDATABLE)):
            violations.add("update_mask", f"{path!r} cannot be updated")
        if not paths:
            violations.add("update_mask", "names no field")
        fields: dict[str, Any] = {}
        if "name" in paths:
            fields["name"] = check_name(given.name, "workflow.name", violations)
        if "description" in paths:
            fields["description"] = given.description
        if "lifecycle_stages" in paths:
            fields["stages"] = parse_stages(
                list(given.lifecycle_stages), "workflow.lifecycle_stages", violations
            )
        version = self._version(given.bpmn_xml, violations) if "bpmn_xml" in paths else None
        violations.check()
        assert workflow_id is not None
        workflow = await self._directory.update(workflow_id, fields, version)
        return pb.UpdateWorkflowResponse(workflow=workflow_message(workflow))

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: Context
    ) -> pb.DeleteWorkflowResponse:
        workflow_id = required_id(request.workflow_id, "workflow_id")
        cancelled = await self._directory.delete(workflow_id, request.force)
        return pb.DeleteWorkflowResponse(cancelled_executions=cancelled)

    async def ActivateWorkflow(
        self, request: pb.ActivateWorkflowRequest, context: Context
    ) -> pb.ActivateWorkflowResponse:
        workflow = await self._directory.move(
            required_id(request.workflow_id, "workflow_id"), ACTIVE
        )
        return pb.ActivateWorkflowResponse(workflow=workflow_message(workflow))

    async def DeactivateWorkflow(
        self, request: pb.DeactivateWorkflowRequest, context: Context
    ) -> pb.DeactivateWorkflowResponse:
        workflow = await self._directory.move(
            required_id(request.workflow_id, "workflow_id"), INACTIVE
        )
        return pb.DeactivateWorkflowResponse(workflow=workflow_message(workflow))

    async def ArchiveWorkflow(
        self, request: pb.ArchiveWorkflowRequest, context: Context
    ) -> pb.ArchiveWorkflowResponse:
        workflow = await self._directory.move(
            required_id(request.workflow_id, "workflow_id"), ARCHIVED
        )
        return pb.ArchiveWorkflowResponse(workflow=workflow_message(workflow))

    # ------------------------------------------------------------ executions

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: Context
    ) -> pb.GetExecutionResponse:
        view = await self._executions.get(required_id(request.execution_id, "execution_id"))
        return pb.GetExecutionResponse(execution=execution_message(view))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        violations = Violations()
        where = ExecutionFilter(
            workflow_id=parse_uuid(request.workflow_id, "workflow_id", violations, required=False),
            user_id=parse_uuid(request.user_id, "user_id", violations, required=False),
            statuses=tuple(
                _statuses(list(request.statuses), EXECUTION_STATUSES, "statuses", violations)
            ),
            started_after=optional_time(request, "started_after"),
            started_before=optional_time(request, "started_before"),
        )
        after, before = where.started_after, where.started_before
        if after is not None and before is not None and before < after:
            violations.add("started_before", "must not be before started_after")
        violations.check()
        found, token = await self._tokens.read_page(
            request,
            [
                str(where.workflow_id or ""),
                str(where.user_id or ""),
                list(where.statuses),
                where.started_after,
                where.started_before,
            ],
            lambda cursor, limit: self._executions.page(where, cursor, limit),
            lambda e: time_and_id(e.started_at, e.id),
            parse_time_and_id,
        )
        return pb.ListExecutionsResponse(
            executions=[execution_message(e) for e in found], next_page_token=token
        )

    async def GetWorkflowStatistics(
        self, request: pb.GetWorkflowStatisticsRequest, context: Context
    ) -> pb.GetWorkflowStatisticsResponse:
        workflow_id = required_id(request.workflow_id, "workflow_id")
        version, counts = await self._directory.statistics(workflow_id, request.version.strip())
        return pb.GetWorkflowStatisticsResponse(
            version=version, elements=[pb.ElementStatistics(**c._asdict()) for c in counts]
        )

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        view = await self._executions.cancel(required_id(request.execution_id, "execution_id"))
        return pb.CancelExecutionResponse(execution=execution_message(view))

    async def PublishMessage(
        self, request: pb.PublishMessageRequest, context: Context
    ) -> pb.PublishMessageResponse:
        violations = Violations()
        message = _message(request, "", violations)
        violations.check()
        assert message is not None
        (published,) = await self._executions.publish([message])
        if published.error is not None:
            raise content_error(published.error, "message") or published.error
        return _published(published)

    async def PublishMessages(
        self, request: pb.PublishMessagesRequest, context: Context
    ) -> pb.PublishMessagesResponse:
        if not 0 < len(request.messages) <= MAX_MESSAGES:
            raise InvalidArgument.field("messages", f"must hold 1 to {MAX_MESSAGES} messages")
        results: list[pb.PublishMessageResponse | None] = []
        valid = []
        for given in request.messages:
            violations = Violations()
            message = None
            if wire_checks.item_clean(given, violations):
                message = _message(given, "", violations)
            if message is None or violations.items:
                results.append(_invalid_message(violations))
            else:
                results.append(None)
                valid.append(message)
        published = iter(await self._executions.publish(valid))
        return pb.PublishMessagesResponse(
            results=[result or _published(next(published)) for result in results]
        )

    # ------------------------------------------------------------ jobs

    async def ActivateJobs(
        self, request: pb.ActivateJobsRequest, context: Context
    ) -> AsyncIterator[pb.ActivateJobsResponse]:
        violations = Violations()
        job_type = check_name(request.job_type, "job_type", violations)
        if job_type.startswith(BUILTIN_PREFIX):
            violations.add("job_type", f"{BUILTIN_PREFIX}* types are done by the engine itself")
        if not 0 < request.max_jobs_to_activate <= MAX_JOBS:
            violations.add("max_jobs_to_activate", f"must be from 1 to {MAX_JOBS}")
        lease = (
            _duration(request.timeout, "timeout", violations, MAX_JOB_TIMEOUT)
            or DEFAULT_JOB_TIMEOUT
        )
        wait = _duration(
            request.request_timeout, "request_timeout", violations, MAX_REQUEST_TIMEOUT
        )
        violations.check()
        fetch = set(request.fetch_variables)
        loop = asyncio.get_running_loop()
        # The long poll ends before the caller's deadline, so that it gets an answer.
        deadline = loop.time() + timeout_for_call(wait.total_seconds(), LONG_POLL_MARGIN_SECONDS)
        left = request.max_jobs_to_activate
        while left > 0:
            jobs = await self._jobs.activate(job_type, request.worker, left, lease)
            if jobs:
                left -= len(jobs)
                yield pb.ActivateJobsResponse(jobs=[self._job(job, fetch) for job in jobs])
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._jobs.wait(job_type, min(remaining, JOB_POLL_SECONDS))

    @staticmethod
    def _job(job: JobRecord, fetch: set[str]) -> pb.ActivatedJob:
        variables = job.variables
        if fetch:
            variables = {k: v for k, v in variables.items() if k in fetch}
        activated = pb.ActivatedJob(
            job_key=job_key(job.execution_id, job.token),
            job_type=job.job_type,
            execution_id=str(job.execution_id),
            workflow_id=str(job.workflow_id),
            element_id=job.element_id,
            user_id=str(job.user_id),
            custom_headers={str(k): str(v) for k, v in job.headers.items()},
            retries=job.retries,
            deadline=timestamp(job.available_at),
            variables=dict_to_struct(variables),
        )
        return activated

    async def CompleteJob(
        self, request: pb.CompleteJobRequest, context: Context
    ) -> pb.CompleteJobResponse:
        violations = Violations()
        variables = variables_of(request.variables, "variables", violations)
        violations.check()
        await self._jobs.complete(request.job_key, variables)
        return pb.CompleteJobResponse()

    async def FailJob(self, request: pb.FailJobRequest, context: Context) -> pb.FailJobResponse:
        violations = Violations()
        if request.retries < 0:
            violations.add("retries", "must not be negative")
        backoff = _duration(request.retry_backoff, "retry_backoff", violations, MAX_RETRY_BACKOFF)
        violations.check()
        await self._jobs.fail(
            request.job_key, request.retries, request.error_message, backoff or None
        )
        return pb.FailJobResponse()

    async def ThrowError(
        self, request: pb.ThrowErrorRequest, context: Context
    ) -> pb.ThrowErrorResponse:
        violations = Violations()
        code = check_name(request.error_code, "error_code", violations)
        variables = variables_of(request.variables, "variables", violations)
        violations.check()
        await self._jobs.throw_error(request.job_key, code, request.error_message, variables)
        return pb.ThrowErrorResponse()

    async def ResolveIncident(
        self, request: pb.ResolveIncidentRequest, context: Context
    ) -> pb.ResolveIncidentResponse:
        await self._jobs.resolve_incident(required_id(request.incident_id, "incident_id"))
        return pb.ResolveIncidentResponse()

    async def EraseUserData(
        self, request: pb.EraseUserDataRequest, context: Context
    ) -> pb.EraseUserDataResponse:
        erased = await self._executions.erase_user(required_id(request.user_id, "user_id"))
        return pb.EraseUserDataResponse(erased_count=erased)
