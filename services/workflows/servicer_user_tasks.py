"""The user task RPCs of the workflows service (part of WorkflowServicer):
validate, call the use case (user_tasks.py), map back."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf import struct_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.errors import Violations
from runtime.pagination import PageTokens, parse_time_and_id, time_and_id
from runtime.parsing import check_name, parse_uuid, required_id
from runtime.structs import dict_to_struct, json_object, timestamp
from services.workflows.domain import variables_problems
from services.workflows.user_task_rules import (
    ASSIGNED,
    CANCELLED,
    COMPLETED,
    CREATED,
    UserTaskQuery,
    UserTaskRecord,
)
from services.workflows.user_tasks import UserTasks

Context = grpc.aio.ServicerContext[Any, Any]

USER_TASK_STATES = {
    pb.USER_TASK_STATE_CREATED: CREATED,
    pb.USER_TASK_STATE_ASSIGNED: ASSIGNED,
    pb.USER_TASK_STATE_COMPLETED: COMPLETED,
    pb.USER_TASK_STATE_CANCELLED: CANCELLED,
}
_STATE_ENUM = {name: value for value, name in USER_TASK_STATES.items()}


def user_task_message(task: UserTaskRecord) -> pb.UserTask:
    message = pb.UserTask(
        id=str(task.id),
        execution_id=str(task.execution_id),
        workflow_id=str(task.workflow_id),
        workflow_version=task.workflow_version,
        element_id=task.element_id,
        user_id=str(task.user_id),
        state=_STATE_ENUM[task.state],
        assignee=task.assignee or "",
        candidate_groups=task.candidate_groups,
        candidate_users=task.candidate_users,
        variables=dict_to_struct(task.variables),
        create_time=timestamp(task.created_at),
    )
    if task.due_at is not None:
        message.due_time.CopyFrom(timestamp(task.due_at))
    if task.follow_up_at is not None:
        message.follow_up_time.CopyFrom(timestamp(task.follow_up_at))
    if task.completed_at is not None:
        message.completion_time.CopyFrom(timestamp(task.completed_at))
    return message


def _task_id(value: str, violations: Violations) -> uuid.UUID | None:
    return parse_uuid(value, "user_task_id", violations)


def _variables(struct: struct_pb2.Struct, violations: Violations) -> dict[str, Any]:
    data = json_object(struct, "variables", violations)
    if data is None:
        return {}
    for problem in variables_problems(data):
        violations.add("variables", problem)
    return data


class UserTaskRpcs:
    """ListUserTasks, GetUserTask, ClaimUserTask, UnclaimUserTask,
    AssignUserTask, CompleteUserTask."""

    _user_tasks: UserTasks
    _tokens: PageTokens

    async def ListUserTasks(
        self, request: pb.ListUserTasksRequest, context: Context
    ) -> pb.ListUserTasksResponse:
        violations = Violations()
        states = []
        for position, value in enumerate(request.states):
            if value not in USER_TASK_STATES:
                violations.add(f"states[{position}]", f"{value} is not a user task state")
            else:
                states.append(USER_TASK_STATES[value])
        query = UserTaskQuery(
            assignee=check_name(request.assignee, "assignee", violations, required=False),
            candidate_group=check_name(
                request.candidate_group, "candidate_group", violations, required=False
            ),
            candidate_user=check_name(
                request.candidate_user, "candidate_user", violations, required=False
            ),
            states=tuple(sorted(set(states))),
            user_id=parse_uuid(request.user_id, "user_id", violations, required=False),
            execution_id=parse_uuid(
                request.execution_id, "execution_id", violations, required=False
            ),
        )
        violations.check()
        found, token = await self._tokens.read_page(
            request,
            query.bound(),
            lambda cursor, limit: self._user_tasks.page(query, cursor, limit),
            lambda t: time_and_id(t.created_at, t.id),
            parse_time_and_id,
        )
        return pb.ListUserTasksResponse(
            user_tasks=[user_task_message(t) for t in found], next_page_token=token
        )

    async def GetUserTask(
        self, request: pb.GetUserTaskRequest, context: Context
    ) -> pb.GetUserTaskResponse:
        task_id = required_id(request.user_task_id, "user_task_id")
        task = await self._user_tasks.get(task_id)
        return pb.GetUserTaskResponse(user_task=user_task_message(task))

    async def ClaimUserTask(
        self, request: pb.ClaimUserTaskRequest, context: Context
    ) -> pb.ClaimUserTaskResponse:
        violations = Violations()
        task_id = _task_id(request.user_task_id, violations)
        assignee = check_name(request.assignee, "assignee", violations)
        violations.check()
        assert task_id is not None
        task = await self._user_tasks.claim(task_id, assignee)
        return pb.ClaimUserTaskResponse(user_task=user_task_message(task))

    async def UnclaimUserTask(
        self, request: pb.UnclaimUserTaskRequest, context: Context
    ) -> pb.UnclaimUserTaskResponse:
        task_id = required_id(request.user_task_id, "user_task_id")
        task = await self._user_tasks.assign(task_id, None)
        return pb.UnclaimUserTaskResponse(user_task=user_task_message(task))

    async def AssignUserTask(
        self, request: pb.AssignUserTaskRequest, context: Context
    ) -> pb.AssignUserTaskResponse:
        violations = Violations()
        task_id = _task_id(request.user_task_id, violations)
        assignee = check_name(request.assignee, "assignee", violations)
        violations.check()
        assert task_id is not None
        task = await self._user_tasks.assign(task_id, assignee)
        return pb.AssignUserTaskResponse(user_task=user_task_message(task))

    async def CompleteUserTask(
        self, request: pb.CompleteUserTaskRequest, context: Context
    ) -> pb.CompleteUserTaskResponse:
        violations = Violations()
        task_id = _task_id(request.user_task_id, violations)
        variables = _variables(request.variables, violations)
        violations.check()
        assert task_id is not None
        task = await self._user_tasks.complete(task_id, variables)
        return pb.CompleteUserTaskResponse(user_task=user_task_message(task))
