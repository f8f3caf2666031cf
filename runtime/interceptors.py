"""The server interceptor every service shares.

It runs each handler inside the incoming call's deadline scope and turns
exceptions into statuses: a ServiceError into its code and details, a lost
database into UNAVAILABLE, a serialization conflict into ABORTED, and
anything else into INTERNAL, logged with the trace id and told to the caller
without internals.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from runtime.deadlines import deadline_scope
from runtime.errors import Aborted, ServiceError, Unavailable, internal_status, to_status
from runtime.telemetry import current_trace_ids

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


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, domain: str) -> None:
        self._domain = domain

    async def _abort(self, context: Context, error: Exception, method: str) -> None:
        known = _as_service_error(error)
        if known is not None:
            status = to_status(known, self._domain)
        else:
            trace_id, _ = current_trace_ids()
            log.exception("unexpected error in %s (trace id %s)", method, trace_id or "-")
            status = internal_status(trace_id, self._domain)
        await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.response_streaming:
            return self._streaming(handler, details.method)
        return self._unary(handler, details.method)

    def _unary(self, handler: Handler, method: str) -> Handler:
        inner = handler.unary_unary or handler.stream_unary

        async def guarded(request: Any, context: Context) -> Any:
            with deadline_scope(context.time_remaining()):
                try:
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                except (grpc.aio.AbortError, grpc.RpcError):
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

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
            with deadline_scope(context.time_remaining()):
                try:
                    async for response in inner(request, context):
                        yield response
                except (grpc.aio.AbortError, grpc.RpcError):
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

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
