"""The server interceptor every service shares.

It traces each call (health and reflection aside), runs it inside the
incoming call's deadline scope, and turns exceptions into statuses: a
ServiceError into its code and details, a lost database into UNAVAILABLE, a
serialization conflict into ABORTED, and anything else into INTERNAL, logged
with the trace id and told to the caller without internals.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import grpc
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from runtime.deadlines import deadline_scope
from runtime.errors import Aborted, ServiceError, Unavailable, internal_status, to_status
from runtime.telemetry import current_trace_ids, traced

log = logging.getLogger(__name__)

# grpc's stubs type handlers for the synchronous server; these are grpc.aio's.
Handler = Any
Context = Any

_UNAVAILABLE = (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, TimeoutError)
_CONFLICT = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


def _as_service_error(error: Exception) -> ServiceError | None:
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, _CONFLICT):
        return Aborted("the change conflicted with a concurrent one; retry", reason="CONFLICT")
    if isinstance(error, _UNAVAILABLE):
        return Unavailable(
            "the service's database is unreachable; retry", reason="DATABASE_UNAVAILABLE"
        )
    return None


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
    """Traces each call (a SERVER span in the caller's trace), runs it in its
    deadline's scope, and gives every failure its status. One interceptor, not
    one per concern, because each layer costs every call."""

    def __init__(self, domain: str, tracer_provider: TracerProvider) -> None:
        self._domain = domain
        self._tracer = tracer_provider.get_tracer(__name__)

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
        with self._span(method, context) as span, deadline_scope(context.time_remaining()):
            try:
                yield
            except (grpc.aio.AbortError, grpc.RpcError):
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

    def _span(self, method: str, context: Context) -> contextlib.AbstractContextManager[Span]:
        if not traced(method):
            return contextlib.nullcontext(INVALID_SPAN)
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        span = self._tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _described(span, method)

    def _status(self, error: Exception, method: str) -> grpc.Status:
        known = _as_service_error(error)
        if known is not None:
            return to_status(known, self._domain)
        trace_id, _ = current_trace_ids()
        log.exception("unexpected error in %s (trace id %s)", method, trace_id or "-")
        return internal_status(trace_id, self._domain)

    def _unary(self, handler: Handler, method: str) -> Handler:
        inner = handler.unary_unary or handler.stream_unary

        async def guarded(request: Any, context: Context) -> Any:
            async with self._serving(method, context):
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result

        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _streaming(self, handler: Handler, method: str) -> Handler:
        inner = handler.unary_stream or handler.stream_stream

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._serving(method, context):
                async for response in inner(request, context):
                    yield response

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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
