"""What the triggers service asks the other services directly: the users an
event names (BatchGetUserProfiles, GetUser by email), whether a workflow
exists (GetWorkflow), and the calls firings asked for (StartExecution, or
BroadcastSignal for a trigger whose action is a signal, sent by the starter
from `pending_starts`). Other calls that must happen go through the outbox
instead.

The use cases see the users service as `Users`, the little they ask of it;
`clients.users.UsersClient` is that over gRPC."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import NoReturn, Protocol

import grpc

from conditions import EventReads
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.clients import GRPC_SERVICES, ServiceClients
from runtime.errors import InvalidArgument, Unavailable, reason_of
from runtime.identity import acting_for, calling_as
from runtime.telemetry import joined
from services.triggers.domain import PRODUCER, PendingStart, Settled, SignalOutcome, UserView

START_EXECUTION = f"/{GRPC_SERVICES['workflows']}/StartExecution"
BROADCAST_SIGNAL = f"/{GRPC_SERVICES['workflows']}/BroadcastSignal"
# The workflows service's answers about a start itself: retrying cannot change them.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


class Unreachable(str):
    """Why a start failed, when the workflows service could not be reached."""


def _refusal(error: grpc.aio.AioRpcError) -> str:
    """The reason the workflows service gave (its ErrorInfo), with its message."""
    return f"{reason_of(error) or error.code().name}: {error.details()}"


def _failed(error: grpc.aio.AioRpcError) -> NoReturn:
    raise Unavailable(
        f"the workflows service failed to answer ({error.code().name}); retry",
        reason="WORKFLOWS_UNAVAILABLE",
    ) from error


class Users(Protocol):
    """What the triggers service asks of the users service."""

    async def profiles(
        self, user_ids: Iterable[uuid.UUID], events: EventReads = ...
    ) -> Mapping[uuid.UUID, UserView]:
        """Those of the users that exist, with the tracked events `events` asks for."""
        ...

    async def ids_by_email(self, emails: Iterable[str]) -> dict[str, uuid.UUID]:
        """The ids of the users with these emails (compared case-insensitively),
        keyed by the lowercased email, for those that exist."""
        ...


class Workflows:
    def __init__(self, clients: ServiceClients) -> None:
        self._clients = clients

    async def check_startable(self, workflow_id: uuid.UUID, field: str) -> None:
        """INVALID_ARGUMENT unless the workflow exists and is not archived (a draft or
        inactive one may be activated later; until then firings start nothing)."""
        stub = workflows_pb2_grpc.WorkflowServiceStub(self._clients.channel("workflows"))
        try:
            reply = await stub.GetWorkflow(
                workflows_pb2.GetWorkflowRequest(workflow_id=str(workflow_id)),
                timeout=self._clients.timeout(),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument.field(
                    field, f"names no workflow: {workflow_id} does not exist"
                ) from error
            _failed(error)
        if reply.workflow.status == workflows_pb2.WORKFLOW_STATUS_ARCHIVED:
            raise InvalidArgument.field(field, f"workflow {workflow_id} is archived")

    async def start(self, start: PendingStart) -> Settled | str:
        """The answer to one start or broadcast, or why it should be tried again
        (Unreachable: the service could not be reached). The call runs in the
        trace of the event that caused it, on behalf of the actors of the call
        that tracked it; its request_id is the trigger execution's id, so a retry
        after a lost answer returns what the first attempt did, and does nothing
        again."""
        signal = start.signal_name
        call = self._clients.channel("workflows").unary_unary(
            START_EXECUTION if signal is None else BROADCAST_SIGNAL,
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            with joined(start.traceparent), calling_as(acting_for(PRODUCER, start.actors)):
                reply: bytes = await call(start.request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                return Settled(start, skip_reason=_refusal(error))
            why = f"{error.code().name}: {error.details()}"
            return Unreachable(why) if error.code() == grpc.StatusCode.UNAVAILABLE else why
        if signal is None:
            started = workflows_pb2.StartExecutionResponse.FromString(reply)
            return Settled(start, workflow_execution_id=uuid.UUID(started.execution.id))
        broadcast = workflows_pb2.BroadcastSignalResponse.FromString(reply)
        outcome = SignalOutcome(signal, broadcast.delivered_count, broadcast.started_count)
        return Settled(start, signal=outcome)
