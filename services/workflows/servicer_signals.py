"""The BroadcastSignal RPC of the workflows service (part of WorkflowServicer):
validate every field, call the use case (signals.py), map back."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.errors import Violations
from runtime.idempotency import request_key
from runtime.identity import current_caller
from runtime.parsing import check_name, parse_uuid
from runtime.structs import json_object
from services.workflows.domain import variables_problems
from services.workflows.signals import MAX_USERS, METHOD, SignalBroadcast, Signals

Context = grpc.aio.ServicerContext[Any, Any]


class SignalRpcs:
    """BroadcastSignal."""

    _signals: Signals

    async def BroadcastSignal(
        self, request: pb.BroadcastSignalRequest, context: Context
    ) -> pb.BroadcastSignalResponse:
        violations = Violations()
        name = check_name(request.signal_name, "signal_name", violations)
        variables = json_object(request.variables, "variables", violations) or {}
        for problem in variables_problems(variables):
            violations.add("variables", problem)
        users: dict[uuid.UUID, None] = {}
        if len(request.user_ids) > MAX_USERS:
            violations.add("user_ids", f"must hold at most {MAX_USERS} users")
        elif request.restrict_to_users and not request.user_ids:
            violations.add("user_ids", "is required with restrict_to_users")
        else:
            for n, value in enumerate(request.user_ids):
                user = parse_uuid(value, f"user_ids[{n}]", violations)
                if user is not None:
                    users[user] = None
        key = request_key(request, METHOD, violations)
        violations.check()
        done = await self._signals.broadcast(
            SignalBroadcast(
                name,
                variables,
                list(users),
                key,
                current_caller().actors,
                restrict_to_users=request.restrict_to_users,
            )
        )
        return pb.BroadcastSignalResponse(
            delivered_count=done.delivered,
            started_count=done.started,
            start_workflow_count=done.start_workflows,
        )
