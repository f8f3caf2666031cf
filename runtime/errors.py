"""Domain errors and their wire form, a google.rpc.Status with details.

Domain code raises these; the server interceptor turns them into a status
with an ErrorInfo (reason, domain, metadata) and, for bad input, a BadRequest
listing every field violation. Anything else becomes INTERNAL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ServiceError(Exception):
    """An error a caller can act on; carries its canonical gRPC code."""

    code = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], *, reason: str | None = None) -> None:
        self.violations = list(violations)
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message, reason=reason)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [packed]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class OperationFailed(Exception):
    """An operation run from the `lifecycle` command failed; the message says why
    and what was left as it was."""


class Violations:
    """Collects field violations so that one error reports all of them."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def to_status(error: ServiceError, domain: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=error.message,
        details=[packed, *error.details()],
    )
    return rpc_status.to_status(status)


def internal_status(trace_id: str, domain: str) -> grpc.Status:
    """What a caller sees of an unexpected failure: nothing but a trace id to quote."""
    message = f"internal error (trace id {trace_id})" if trace_id else "internal error"
    error = Internal(message, metadata={"trace_id": trace_id} if trace_id else None)
    return to_status(error, domain)
