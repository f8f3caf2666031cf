"""What the triggers service asks the other services directly: the users an
event names (BatchGetUserProfiles, GetUser by email), whether a workflow
exists (GetWorkflow), and the calls firings asked for (StartExecution, or
BroadcastSignal for a trigger whose action is a signal, sent by the starter
from `pending_starts`). Other calls that must happen go through the outbox
instead.

The use cases see the users service as `Users`, the little they ask of it;
`clients.users.UsersClient` is that over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import NoReturn, Protocol

import grpc
from opentelemetry import trace

from conditions import EventReads
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.chains import Chain
from runtime.clients import GRPC_SERVICES, ServiceClients
from runtime.errors import InvalidArgument, Unavailable, reason_of
from runtime.identity import acting_for, calling_as
from runtime.telemetry import joined, linked_span
from runtime.wire import message_field
from services.triggers.domain import PRODUCER, PendingStart, Settled, SignalOutcome, UserView

START_EXECUTIONS = f"/{GRPC_SERVICES['workflows']}/StartExecutions"
BROADCAST_SIGNAL = f"/{GRPC_SERVICES['workflows']}/BroadcastSignal"
# Starts a StartExecutions call carries at most (the workflows service takes 500).
STARTS_PER_CALL = 200
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
    def __init__(self, clients: ServiceClients, tracer: trace.Tracer) -> None:
        self._clients = clients
        self._tracer = tracer

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

    async def start(self, starts: Sequence[PendingStart]) -> list[Settled | str]:
        """The answer to each start or broadcast, in order, or why it should be
        tried again (Unreachable: the service could not be reached). Each call is
        made on behalf of the actors of the call that tracked the event: the
        workflow starts of one chain of actors go together, in StartExecutions
        calls; a broadcast goes alone, in the trace of the event that caused it.
        A request_id is the trigger execution's id, so a retry after a lost
        answer returns what the first attempt did, and does nothing again."""
        together: dict[Chain, list[int]] = defaultdict(list)
        for position, start in enumerate(starts):
            if start.signal_name is None:
                together[start.actors].append(position)
        calls: list[tuple[list[int], Awaitable[list[Settled | str]]]] = [
            (part, self._start_executions([starts[n] for n in part]))
            for positions in together.values()
            for first in range(0, len(positions), STARTS_PER_CALL)
            for part in [positions[first : first + STARTS_PER_CALL]]
        ]
        calls += [
            ([n], self._broadcast(start))
            for n, start in enumerate(starts)
            if start.signal_name is not None
        ]
        answers = await asyncio.gather(*(call for _, call in calls))
        ordered: list[Settled | str | None] = [None] * len(starts)
        for (positions, _), answered in zip(calls, answers, strict=True):
            for n, answer in zip(positions, answered, strict=True):
                ordered[n] = answer
        return [answer for answer in ordered if answer is not None]

    async def _start_executions(self, starts: Sequence[PendingStart]) -> list[Settled | str]:
        """One StartExecutions call, in the trace of the first start's event,
        linked to the others'."""
        call = self._clients.channel("workflows").unary_unary(
            START_EXECUTIONS, request_serializer=None, response_deserializer=None
        )
        request = b"".join(message_field(1, start.request) for start in starts)
        try:
            with (
                linked_span(
                    self._tracer,
                    "start executions",
                    [start.traceparent for start in starts],
                    kind=trace.SpanKind.CLIENT,
                    attributes={"starts": len(starts)},
                ),
                calling_as(acting_for(PRODUCER, starts[0].actors)),
            ):
                reply: bytes = await call(request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            return [_retry(error.code(), str(error.details()))] * len(starts)
        results = workflows_pb2.StartExecutionsResponse.FromString(reply).results
        return [_started(start, result) for start, result in zip(starts, results, strict=True)]

    async def _broadcast(self, start: PendingStart) -> list[Settled | str]:
        assert start.signal_name is not None
        call = self._clients.channel("workflows").unary_unary(
            BROADCAST_SIGNAL, request_serializer=None, response_deserializer=None
        )
        try:
            with joined(start.traceparent), calling_as(acting_for(PRODUCER, start.actors)):
                reply: bytes = await call(start.request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                return [Settled(start, skip_reason=_refusal(error))]
            return [_retry(error.code(), str(error.details()))]
        broadcast = workflows_pb2.BroadcastSignalResponse.FromString(reply)
        outcome = SignalOutcome(
            start.signal_name, broadcast.delivered_count, broadcast.started_count
        )
        return [Settled(start, signal=outcome)]


def _retry(code: grpc.StatusCode, details: str) -> str:
    """Why a call should be tried again; Unreachable when the service was away."""
    why = f"{code.name}: {details}"
    return Unreachable(why) if code == grpc.StatusCode.UNAVAILABLE else why


def _started(start: PendingStart, result: workflows_pb2.StartExecutionResult) -> Settled | str:
    """A start's result of StartExecutions, read as StartExecution's answer would be."""
    if not result.HasField("error"):
        return Settled(start, workflow_execution_id=uuid.UUID(result.execution.id))
    error = result.error
    code = grpc.StatusCode[error.code] if error.code in grpc.StatusCode.__members__ else None
    if code in _REFUSALS:
        return Settled(start, skip_reason=f"{error.reason or error.code}: {error.message}")
    return _retry(code or grpc.StatusCode.UNKNOWN, error.message)
