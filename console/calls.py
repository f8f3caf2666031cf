"""The console's calls to the services: one channel per service, every call
carrying the person's bearer token (from the authenticating proxy) and a
deadline, and gRPC errors turned into something a person can read."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from console.config import ConsoleConfig
from lifecycle.metrics.v1 import metrics_pb2_grpc
from lifecycle.operations.v1 import operations_pb2_grpc
from lifecycle.segments.v1 import segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.auth import AUTHORIZATION
from runtime.tls import open_channel

if TYPE_CHECKING:
    from lifecycle.metrics.v1.metrics_pb2_grpc import MetricsServiceAsyncStub
    from lifecycle.operations.v1.operations_pb2_grpc import OperationsServiceAsyncStub
    from lifecycle.segments.v1.segments_pb2_grpc import SegmentServiceAsyncStub
    from lifecycle.triggers.v1.triggers_pb2_grpc import TriggerServiceAsyncStub
    from lifecycle.users.v1.users_pb2_grpc import UserServiceAsyncStub
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub

# The Authorization header of the page request being served, if any.
forwarded_authorization: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "forwarded_authorization", default=None
)


class _PersonsCall(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Each call carries the token of the person the page is for, so that the
    services decide what that person may see and do, and a deadline."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        header = forwarded_authorization.get()
        if header:
            metadata.add(AUTHORIZATION, header)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class Services:
    """Typed stubs of the five services (and of the operations service each
    serves), on channels opened once."""

    def __init__(self, config: ConsoleConfig, observers: Sequence[Any] = ()) -> None:
        # `observers` watch every call (bench/console_bench.py times them).
        interceptors = [_PersonsCall(config.call_timeout), *observers]
        self._channels = {
            name: open_channel(address, config.tls, interceptors=interceptors)
            for name, address in config.addresses.items()
        }
        self.users: UserServiceAsyncStub = users_pb2_grpc.UserServiceStub(self._channels["users"])
        self.workflows: WorkflowServiceAsyncStub = workflows_pb2_grpc.WorkflowServiceStub(
            self._channels["workflows"]
        )
        self.segments: SegmentServiceAsyncStub = segments_pb2_grpc.SegmentServiceStub(
            self._channels["segments"]
        )
        self.triggers: TriggerServiceAsyncStub = triggers_pb2_grpc.TriggerServiceStub(
            self._channels["triggers"]
        )
        self.metrics: MetricsServiceAsyncStub = metrics_pb2_grpc.MetricsServiceStub(
            self._channels["metrics"]
        )
        # What waits in each service's outbox, which each serves about itself.
        self.operations: dict[str, OperationsServiceAsyncStub] = {
            name: operations_pb2_grpc.OperationsServiceStub(channel)
            for name, channel in self._channels.items()
        }

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)


# The page status of each gRPC code a person may meet.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True)
class CallProblem:
    """What a page shows of a failed call: the code's name, the service's
    message and the fields it named; never a stack trace."""

    code: str
    message: str
    fields: list[tuple[str, str]]
    http_status: int


def call_problem(error: grpc.aio.AioRpcError) -> CallProblem:
    status = rpc_status.from_call(cast(grpc.Call, error))
    fields: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields = [(v.field, v.description) for v in bad_request.field_violations]
    code = error.code()
    return CallProblem(
        code=code.name,
        message=error.details() or code.name.replace("_", " ").lower(),
        fields=fields,
        http_status=_HTTP_STATUS.get(code, 502),
    )
