"""OpenTelemetry tracing and JSON logs that carry trace and span ids, and
the actors of the call (runtime.identity) a line is logged for.

Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set. Without
an exporter they are not recorded (OTEL_TRACES_SAMPLER can say otherwise),
but every request still gets a trace id, propagated and written in the logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.config import TelemetryConfig
from runtime.identity import ANONYMOUS, current_caller

_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def traced(method: str) -> bool:
    """Probes and reflection would drown the traces that matter."""
    return not method.startswith(_UNTRACED_PREFIXES)


def create_tracer_provider(
    config: TelemetryConfig, processors: tuple[SpanProcessor, ...] = ()
) -> TracerProvider:
    exported = bool(config.otlp_endpoint or processors)
    sampler = None if exported or config.sampler else ALWAYS_OFF
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}), sampler=sampler
    )
    if config.otlp_endpoint:
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def instrument_database(provider: TracerProvider) -> None:
    """asyncpg spans. The instrumentation patches asyncpg for the whole process;
    a provider that records nothing leaves it alone, as a span per query costs
    every query even when nobody records it."""
    if provider.sampler is ALWAYS_OFF:
        return
    instrumentor = AsyncPGInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


_PROPAGATOR = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The current trace as a W3C traceparent, to carry it across a queue."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def trace_context(traceparent: str | None) -> Context | None:
    """The context a stored traceparent names (None for none)."""
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


@contextlib.contextmanager
def joined(traceparent: str | None) -> Iterator[None]:
    """Runs the block (and the calls it makes) in the trace `traceparent` names."""
    stored = trace_context(traceparent)
    if stored is None:
        yield
        return
    token = otel_context.attach(stored)
    try:
        yield
    finally:
        otel_context.detach(token)


def linked_span(
    tracer: trace.Tracer,
    name: str,
    traceparents: Sequence[str | None],
    *,
    kind: trace.SpanKind,
    attributes: dict[str, int] | None = None,
) -> contextlib.AbstractContextManager[trace.Span]:
    """A span for work done for many requests at once (a merged call): in the
    trace of the first, linked to the others'."""
    known = [c for c in map(trace_context, traceparents) if c is not None]
    links = [trace.Link(trace.get_current_span(c).get_span_context()) for c in known[1:]]
    return tracer.start_as_current_span(
        name,
        context=known[0] if known else None,
        kind=kind,
        links=links,
        attributes=attributes,
    )


def current_trace_ids() -> tuple[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the trace and span of the current request
    and the actors it is made for. A line logged outside any call or work
    (starting, stopping) has neither: there the caller is the default,
    anonymous, which would name nobody who is there."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_trace_ids()
        entry: dict[str, str | list[str]] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = span_id
        caller = current_caller()
        if trace_id or caller is not ANONYMOUS:
            entry["actors"] = list(caller.actors)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
