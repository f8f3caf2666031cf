"""The server interceptor every service shares.

It traces each call (health and reflection aside), runs it inside the
incoming call's deadline scope, and turns exceptions into statuses: a request
that does not parse or holds a value no service can use (runtime.wire_checks)
into INVALID_ARGUMENT, a ServiceError into its code and details, a value the
database refused into INVALID_ARGUMENT, a lost database into UNAVAILABLE, a
serialization conflict into ABORTED, and anything else into INTERNAL, logged
with the trace id and told to the caller without internals. Every status fits
in runtime.errors.MAX_STATUS_BYTES.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from runtime import wire_checks
from runtime.admission import Admission
from runtime.auth import Gate
from runtime.deadlines import deadline_scope
from runtime.errors import (
    Aborted,
    InvalidArgument,
    ServiceError,
    Unavailable,
    internal_error,
    to_status,
)
from runtime.identity import calling_as
from runtime.isolation import CONFLICTS, content_error, database_lost
from runtime.structs import JsonValueError
from runtime.telemetry import current_trace_ids, traced

log = logging.getLogger(__name__)

# grpc's stubs type handlers for the synchronous server; these are grpc.aio's.
Handler = Any
Context = Any


# What a failed call to another service left unhandled means for the caller: the
# service it needs is away (UNAVAILABLE), or else a fault of the suite (INTERNAL,
# logged), never the UNKNOWN grpc would give.
_UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def service_error(error: Exception, method: str) -> ServiceError:
    """The error a caller gets for a failure of `method`: what it means, or an
    INTERNAL error quoting the trace id of the unexpected failure, logged."""
    known = _as_service_error(error)
    if known is not None:
        return known
    trace_id, _ = current_trace_ids()
    log.error("unexpected error in %s (trace id %s)", method, trace_id or "-", exc_info=error)
    return internal_error(trace_id)


def _as_service_error(error: Exception) -> ServiceError | None:
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, DecodeError):
        return InvalidArgument.field("request", "is not a valid message of this method's type")
    if isinstance(error, JsonValueError):
        return InvalidArgument.field(error.path or "request", error.description)
    if isinstance(error, CONFLICTS):
        return Aborted("the change conflicted with a concurrent one; retry", reason="CONFLICT")
    if database_lost(error):
        return Unavailable(
            "the service's database is unreachable; retry", reason="DATABASE_UNAVAILABLE"
        )
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _UNREACHED:
        return Unavailable(
            "a service this call needs did not answer; retry", reason="DEPENDENCY_UNAVAILABLE"
        )
    return content_error(error, "request")


# The codes a server's span counts as its own failures (OpenTelemetry's rule for servers).
_SERVER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Traces each call (a SERVER span in the caller's trace), admits it
    (runtime.auth: who calls, and whether it may) and serves it as its caller,
    runs it in its deadline's scope, and gives every failure its status. One interceptor, not
    one per concern, because each layer costs every call."""

    def __init__(
        self,
        domain: str,
        tracer_provider: TracerProvider,
        gate: Gate,
        admission: Admission,
        batch_items: frozenset[str] = frozenset(),
    ) -> None:
        self._domain = domain
        self._tracer = tracer_provider.get_tracer(__name__)
        self._gate = gate
        self._admission = admission
        self._batch_items = batch_items

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.response_streaming:
            return self._streaming(handler, method)
        return self._unary(handler, method)

    @contextlib.asynccontextmanager
    async def _serving(self, method: str, context: Context) -> AsyncIterator[None]:
        metadata = dict(context.invocation_metadata() or ())
        with (
            self._span(method, metadata) as span,
            deadline_scope(context.time_remaining()),
        ):
            try:
                caller = await self._gate.admit(method, metadata, context.auth_context)
                with self._admission.call(method), calling_as(caller):
                    yield
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                status = self._status(error, method)
                if span.is_recording():
                    span.set_attribute("rpc.grpc.status_code", status.code.value[0])
                    if status.code in _SERVER_FAILURES:
                        span.set_status(Status(StatusCode.ERROR, status.details))
                await context.abort(
                    status.code, status.details, trailing_metadata=status.trailing_metadata
                )

    def _span(
        self, method: str, metadata: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Span]:
        if not traced(method):
            return contextlib.nullcontext(INVALID_SPAN)
        parent = propagate.extract(metadata)
        span = self._tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _described(span, method)

    def _status(self, error: Exception, method: str) -> grpc.Status:
        return to_status(service_error(error, method), self._domain)

    def _unary(self, handler: Handler, method: str) -> Handler:
        inner = handler.unary_unary or handler.stream_unary
        parse = _parser(handler, self._batch_items)

        async def guarded(request: Any, context: Context) -> Any:
            async with self._serving(method, context):
                result = inner(parse(request), context)
                return await result if inspect.isawaitable(result) else result

        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(
            guarded,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    def _streaming(self, handler: Handler, method: str) -> Handler:
        inner = handler.unary_stream or handler.stream_stream
        parse = _parser(handler, self._batch_items)

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._serving(method, context):
                async for response in inner(parse(request), context):
                    yield response

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(
            guarded,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


def _parser(handler: Handler, batch_items: frozenset[str]) -> Callable[[Any], Any]:
    """Parses and checks requests inside the call rather than in grpc, where a
    request that does not parse (corrupt, or nested past protobuf's depth limit)
    ends as UNKNOWN with an error log; here it is the caller's INVALID_ARGUMENT,
    as is a value no service can use (runtime.wire_checks)."""
    deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
    if deserialize is None:
        return lambda request: request

    def checked(raw: bytes) -> Any:
        request = deserialize(raw)
        found = wire_checks.violations(request, _item_fields(request.DESCRIPTOR, batch_items))
        if found:
            raise InvalidArgument(found)
        return request

    if not handler.request_streaming:
        return checked

    async def parsed(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for request in requests:
            yield checked(request)

    return parsed


@functools.cache
def _item_fields(descriptor: Descriptor, batch_items: frozenset[str]) -> frozenset[str]:
    """The fields of a request type that hold a batch's items, checked by its servicer."""
    return frozenset(f.name for f in descriptor.fields if f.full_name in batch_items)


@contextlib.contextmanager
def _described(span: contextlib.AbstractContextManager[Span], method: str) -> Iterator[Span]:
    """The span, with the RPC's attributes when it is recorded."""
    with span as current:
        if current.is_recording():
            service, _, name = method.lstrip("/").rpartition("/")
            current.set_attributes(
                {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            )
        yield current
