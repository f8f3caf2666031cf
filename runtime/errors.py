"""Domain errors and their wire form, a google.rpc.Status with details.

Domain code raises these; the server interceptor turns them into a status
with an ErrorInfo (reason, domain, metadata) and, for bad input, a BadRequest
listing every field violation. Anything else becomes INTERNAL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

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
    """What the service needs is down: its database, a peer. Another attempt
    within a gRPC retry's backoff would fail alike and add load to what is
    recovering, so the status tells the caller's gRPC not to retry it; the
    caller decides when to try again. `retry_elsewhere`: this replica is going
    away, another may answer at once."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_elsewhere: bool = False,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_elsewhere = retry_elsewhere


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def _bad_request(violations: Iterable[FieldViolation]) -> any_pb2.Any:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(bad_request)
    return packed


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


# Every status a service sends, grpc-message and details together, fits in this:
# gRPC's C-core clients refuse trailers over 8 KiB (sometimes from 8 KiB on)
# and report RESOURCE_EXHAUSTED instead of the real status.
MAX_STATUS_BYTES = 4096
MAX_LISTED_VIOLATIONS = 20
_MAX_FIELD_CHARS = 120
_MAX_TEXT_CHARS = 400
# The message is sent twice (grpc-message, and inside the details): it
# summarises, while the BadRequest lists.
_MAX_MESSAGE_CHARS = 500


def to_status(error: ServiceError, domain: str) -> grpc.Status:
    """The wire form of `error`, within MAX_STATUS_BYTES: at most
    MAX_LISTED_VIOLATIONS violations listed, as many as fit, the message
    naming as many as fit in its share and how many more there are, echoed
    text cut short (shorter still when even one violation would not fit)."""
    text = _MAX_TEXT_CHARS
    while True:
        status = _status(error, domain, text)
        if _wire_size(status) <= MAX_STATUS_BYTES or text <= 16:
            return _with_pushback(error, rpc_status.to_status(status))
        text //= 2


def _status(error: ServiceError, domain: str, text: int) -> status_pb2.Status:
    metadata = {key: _cut(value, text) for key, value in error.metadata.items()}
    if not isinstance(error, InvalidArgument):
        return _status_of(error, domain, _cut(error.message, _MAX_MESSAGE_CHARS), metadata, [])
    metadata["violation_count"] = str(len(error.violations))
    shown: list[FieldViolation] = []
    status = _status_of(error, domain, "", metadata, [])
    for violation in error.violations[:MAX_LISTED_VIOLATIONS]:
        cut = FieldViolation(
            _cut(violation.field, min(text, _MAX_FIELD_CHARS)), _cut(violation.description, text)
        )
        message = _summary([*shown, cut], len(error.violations), _MAX_MESSAGE_CHARS)
        candidate = _status_of(error, domain, message, metadata, [*shown, cut])
        if shown and _wire_size(candidate) > MAX_STATUS_BYTES:
            break
        shown.append(cut)
        status = candidate
    return status


def _status_of(
    error: ServiceError,
    domain: str,
    message: str,
    metadata: dict[str, str],
    violations: list[FieldViolation],
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details = [packed, _bad_request(violations)] if violations else [packed]
    return status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=message, details=details
    )


def _summary(shown: list[FieldViolation], total: int, limit: int) -> str:
    """As many whole violations as fit in `limit` characters, then how many more."""
    parts: list[str] = []
    used = 0
    for violation in shown:
        part = f"{violation.field}: {violation.description}"
        if parts and used + len(part) > limit:
            break
        parts.append(part)
        used += len(part) + 2
    more = total - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _wire_size(status: status_pb2.Status) -> int:
    """Bytes of the two trailers: grpc-message is percent-encoded, the details
    (grpc-status-details-bin) base64."""
    encoded = status.message.encode()
    message = len(encoded) + 2 * sum(1 for b in encoded if b < 0x20 or b > 0x7E or b == 0x25)
    details: int = status.ByteSize()
    return message + 4 * ((details + 2) // 3)


# gRPC's retry pushback (gRFC A6): a negative delay tells the caller's gRPC not to retry.
_NO_RETRY = ("grpc-retry-pushback-ms", "-1")


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _with_pushback(error: ServiceError, status: grpc.Status) -> grpc.Status:
    if not isinstance(error, Unavailable) or error.retry_elsewhere:
        return status
    return _Status(status.code, status.details, (*status.trailing_metadata, _NO_RETRY))


def internal_error(trace_id: str) -> Internal:
    """What a caller sees of an unexpected failure: nothing but a trace id to quote."""
    message = f"internal error (trace id {trace_id})" if trace_id else "internal error"
    return Internal(message, metadata={"trace_id": trace_id} if trace_id else None)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The reason of the ErrorInfo a service's error carries; empty when it has none."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""
