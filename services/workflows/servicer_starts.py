"""StartExecution and StartExecutions (part of WorkflowServicer): validate
every field, call the use case (executions.py), map back; and an execution as
the message every executions RPC answers with."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import struct_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime import wire_checks
from runtime.errors import InvalidArgument, ServiceError, Violations
from runtime.idempotency import request_key
from runtime.identity import current_caller
from runtime.interceptors import service_error
from runtime.parsing import parse_uuid
from runtime.structs import dict_to_struct, json_object, timestamp
from services.workflows.domain import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ExecutionView,
    Started,
    StartRequest,
    job_key,
    variables_problems,
)
from services.workflows.executions import START_METHOD, Executions

Context = grpc.aio.ServicerContext[Any, Any]

# Starts one StartExecutions call may ask for.
MAX_STARTS = 500
EXECUTION_STATUSES = {
    pb.EXECUTION_STATUS_PENDING: PENDING,
    pb.EXECUTION_STATUS_RUNNING: RUNNING,
    pb.EXECUTION_STATUS_COMPLETED: COMPLETED,
    pb.EXECUTION_STATUS_FAILED: FAILED,
    pb.EXECUTION_STATUS_CANCELLED: CANCELLED,
}
_EXECUTION_ENUM = {name: value for value, name in EXECUTION_STATUSES.items()}


def execution_message(view: ExecutionView) -> pb.Execution:
    message = pb.Execution(
        id=str(view.id),
        workflow_id=str(view.workflow_id),
        workflow_version=view.version,
        user_id=str(view.user_id),
        status=_EXECUTION_ENUM[view.status],
        variables=dict_to_struct(view.variables),
        current_node_ids=view.current_nodes,
        start_time=timestamp(view.started_at),
        error_message=view.error_message or "",
        history=[
            pb.ExecutionStep(
                element_id=element, element_type=kind, state=state, step_time=timestamp(at)
            )
            for element, kind, state, at in view.history
        ],
        incidents=[
            pb.Incident(
                id=str(i.id),
                element_id=i.element_id,
                job_key=job_key(i.execution_id, i.token) if i.from_job else "",
                error_message=i.error_message,
                create_time=timestamp(i.created_at),
                resolved=i.resolved_at is not None,
            )
            for i in view.incidents
        ],
    )
    if view.completed_at is not None:
        message.completion_time.CopyFrom(timestamp(view.completed_at))
    return message


def variables_of(struct: struct_pb2.Struct, field: str, violations: Violations) -> dict[str, Any]:
    data = json_object(struct, field, violations)
    if data is None:
        return {}
    for problem in variables_problems(data):
        violations.add(field, problem)
    return data


def start_request(request: pb.StartExecutionRequest, violations: Violations) -> StartRequest | None:
    """The start a request asks for; problems go to `violations` by field."""
    workflow_id = parse_uuid(request.workflow_id, "workflow_id", violations)
    user_id = parse_uuid(request.user_id, "user_id", violations)
    variables = variables_of(request.variables, "variables", violations)
    key = request_key(request, START_METHOD, violations)
    if request.conflict_policy not in pb.ConflictPolicy.values():
        violations.add("conflict_policy", f"{request.conflict_policy} is not a policy")
    if workflow_id is None or user_id is None or violations.items:
        return None
    return StartRequest(
        workflow_id,
        user_id,
        variables,
        key,
        use_existing=request.conflict_policy == pb.CONFLICT_POLICY_USE_EXISTING,
        exclusive=request.conflict_policy != pb.CONFLICT_POLICY_ALLOW_PARALLEL,
        actors=current_caller().actors,
    )


def _refused(error: ServiceError) -> pb.StartExecutionResult:
    field = error.violations[0].field if isinstance(error, InvalidArgument) else ""
    return pb.StartExecutionResult(
        error=pb.StartError(
            code=error.code.name, reason=error.reason, field=field, message=error.message
        )
    )


def _start_result(outcome: Started | BaseException) -> pb.StartExecutionResult:
    """A start's result: its execution, or the error StartExecution would answer."""
    if isinstance(outcome, Started):
        return pb.StartExecutionResult(
            execution=execution_message(outcome.execution), existing=outcome.existing
        )
    if not isinstance(outcome, Exception):
        raise outcome
    return _refused(service_error(outcome, "StartExecutions"))


class StartRpcs:
    """StartExecution, StartExecutions."""

    _executions: Executions

    async def StartExecution(
        self, request: pb.StartExecutionRequest, context: Context
    ) -> pb.StartExecutionResponse:
        violations = Violations()
        start = start_request(request, violations)
        violations.check()
        assert start is not None
        started = await self._executions.start(start)
        return pb.StartExecutionResponse(
            execution=execution_message(started.execution), existing=started.existing
        )

    async def StartExecutions(
        self, request: pb.StartExecutionsRequest, context: Context
    ) -> pb.StartExecutionsResponse:
        """Each start as StartExecution would make it; they are submitted at once,
        so the executions' group commit writes them in a few transactions."""
        if not 0 < len(request.starts) <= MAX_STARTS:
            raise InvalidArgument.field("starts", f"must hold 1 to {MAX_STARTS} starts")
        results: list[pb.StartExecutionResult | None] = []
        asked: list[StartRequest] = []
        for given in request.starts:
            violations = Violations()
            start = None
            if wire_checks.item_clean(given, violations):
                start = start_request(given, violations)
            if start is None:
                results.append(_refused(InvalidArgument(violations.items)))
            else:
                results.append(None)
                asked.append(start)
        outcomes = iter(
            await asyncio.gather(
                *(self._executions.start(start) for start in asked), return_exceptions=True
            )
        )
        return pb.StartExecutionsResponse(
            results=[result or _start_result(next(outcomes)) for result in results]
        )
