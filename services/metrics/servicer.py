"""gRPC entry point of the metrics service: validate, call the use case, map back."""

from __future__ import annotations

import json
from typing import Any

import grpc

from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from runtime.clock import Clock
from runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, Violations
from runtime.lifecycle_events import is_known_event_type
from runtime.pagination import PageTokens, parse_time_and_number, time_and_id
from runtime.parsing import optional_time, parse_uuid
from runtime.stages import stage_name, stage_value
from runtime.structs import compact_json, dict_to_struct, json_object, timestamp
from services.metrics.analytics import (
    funnel_response,
    parse_funnel,
    parse_retention,
    retention_response,
)
from services.metrics.domain import (
    ALL_STAGES,
    METRIC_NAMES,
    EventFilter,
    LoggedEvent,
    MetricQuery,
    RefusedEvent,
    parse_events,
    parse_range,
)
from services.metrics.handlers import EventLog, Recorded, Reports

Context = grpc.aio.ServicerContext[Any, Any]
# Refused events named in an error; the rest are counted. A status carries its
# details in trailers, which gRPC keeps small.
MAX_NAMED_EVENTS = 10


def event_message(event: LoggedEvent) -> metrics_pb2.LifecycleEvent:
    return metrics_pb2.LifecycleEvent(
        event_id=str(event.event_id),
        event_type=event.event_type,
        user_id=str(event.user_id or ""),
        workflow_execution_id=str(event.workflow_execution_id or ""),
        lifecycle_stage=stage_value(event.stage),
        data=dict_to_struct(event.data),
        event_time=timestamp(event.created_at),
        producer=event.producer or "",
        actors=event.actors,
    )


def _refusal(
    refused: list[RefusedEvent], recorded: Recorded
) -> InvalidArgument | FailedPrecondition:
    """The error naming the refused events of a batch whose valid events were stored."""
    named = sorted(refused, key=lambda r: r.position)[:MAX_NAMED_EVENTS]
    stored = (
        f"{recorded.recorded} other events were stored ({recorded.duplicates} already were);"
        " a retry stores nothing twice"
    )
    more = len(refused) - len(named)
    if any(r.malformed for r in refused):
        violations = [
            FieldViolation(r.field_path, f"{r.description} (event {r.event_id})") for r in named
        ]
        if more:
            violations.append(FieldViolation("events", f"{more} more events were refused"))
        violations.append(FieldViolation("events", stored))
        return InvalidArgument(violations, reason="INVALID_EVENTS")
    listed = "; ".join(f"event {r.event_id}: {r.description}" for r in named)
    return FailedPrecondition(
        f"{len(refused)} events refused: {listed}{f' (and {more} more)' if more else ''}; {stored}",
        reason="EVENT_OUTSIDE_PARTITIONS",
        metadata={
            "event_ids": ",".join(r.event_id for r in named),
            "recorded_count": str(recorded.recorded),
        },
    )


def _stages(values: list[int], field: str, violations: Violations) -> tuple[str, ...]:
    """Stage names of a filter; UNSPECIFIED names the series across all stages."""
    names = []
    for position, value in enumerate(values):
        name = ALL_STAGES if value == 0 else stage_name(value)
        if name is None:
            violations.add(f"{field}[{position}]", f"{value} is not a lifecycle stage")
        else:
            names.append(name)
    return tuple(sorted(set(names)))


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(
        self, events: EventLog, reports: Reports, page_tokens: PageTokens, clock: Clock
    ) -> None:
        self._events = events
        self._reports = reports
        self._tokens = page_tokens
        self._clock = clock

    async def RecordEvents(
        self, request: metrics_pb2.RecordEventsRequest, context: Context
    ) -> metrics_pb2.RecordEventsResponse:
        rows, malformed = parse_events(request.events)
        recorded = await self._events.record(rows)
        refused = malformed + recorded.refused
        if refused:
            raise _refusal(refused, recorded)
        return metrics_pb2.RecordEventsResponse(
            recorded_count=recorded.recorded,
            duplicate_count=recorded.duplicates,
            erased_user_count=recorded.erased_users,
        )

    async def ListEvents(
        self, request: metrics_pb2.ListEventsRequest, context: Context
    ) -> metrics_pb2.ListEventsResponse:
        violations = Violations()
        for position, event_type in enumerate(request.event_types):
            if not is_known_event_type(event_type):
                violations.add(f"event_types[{position}]", f"{event_type!r} is not an event type")
        stages = _stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
        where = EventFilter(
            user_id=parse_uuid(request.user_id, "user_id", violations, required=False),
            event_types=tuple(sorted(set(request.event_types))),
            stages=stages,
            workflow_execution_id=parse_uuid(
                request.workflow_execution_id, "workflow_execution_id", violations, required=False
            ),
            start_time=optional_time(request, "start_time"),
            end_time=optional_time(request, "end_time"),
            actor=request.actor or None,
        )
        if ALL_STAGES in stages:
            violations.add("lifecycle_stages", "must name stages")
        if where.start_time and where.end_time and where.end_time <= where.start_time:
            violations.add("end_time", "must be after start_time")
        violations.check()
        query = [
            str(where.user_id or ""),
            where.event_types,
            where.stages,
            str(where.workflow_execution_id or ""),
            where.start_time,
            where.end_time,
            request.actor,
        ]
        events, next_token = await self._tokens.read_page(
            request,
            query,
            lambda cursor, limit: self._events.read(where, cursor, limit),
            lambda event: time_and_id(event.created_at, event.id),
            parse_time_and_number,
        )
        return metrics_pb2.ListEventsResponse(
            events=[event_message(event) for event in events], next_page_token=next_token
        )

    async def EraseUserData(
        self, request: metrics_pb2.EraseUserDataRequest, context: Context
    ) -> metrics_pb2.EraseUserDataResponse:
        violations = Violations()
        user_id = parse_uuid(request.user_id, "user_id", violations)
        violations.check()
        assert user_id is not None
        return metrics_pb2.EraseUserDataResponse(
            erased_count=await self._events.erase_user(user_id)
        )

    async def RunRollup(
        self, request: metrics_pb2.RunRollupRequest, context: Context
    ) -> metrics_pb2.RunRollupResponse:
        days = None
        if request.start_date or request.end_date:
            violations = Violations()
            days = parse_range(request.start_date, request.end_date, violations)
            violations.check()
        result = await self._reports.run_rollup(days)
        if result is None:
            return metrics_pb2.RunRollupResponse()
        return metrics_pb2.RunRollupResponse(rows_written=result.rows_written, days=result.days)

    async def GetMetrics(
        self, request: metrics_pb2.GetMetricsRequest, context: Context
    ) -> metrics_pb2.GetMetricsResponse:
        violations = Violations()
        days = parse_range(request.start_date, request.end_date, violations)
        for position, name in enumerate(request.metric_names):
            if name not in METRIC_NAMES:
                violations.add(f"metric_names[{position}]", f"{name!r} is not a metric")
        stages = _stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
        dimensions = json_object(request.dimensions, "dimensions", violations)
        violations.check()
        assert days is not None and dimensions is not None
        query = MetricQuery(
            *days,
            names=tuple(sorted(set(request.metric_names))),
            stages=stages,
            dimensions=compact_json(dimensions),
        )
        response = metrics_pb2.GetMetricsResponse()
        series = None
        key = None
        for point in await self._reports.metrics(query):
            point_key = (point.name, point.stage, json.dumps(point.dimensions))
            if point_key != key:
                key = point_key
                series = response.series.add(
                    metric_name=point.name,
                    lifecycle_stage=stage_value(None if point.stage == ALL_STAGES else point.stage),
                    dimensions=dict_to_struct(point.dimensions),
                )
            assert series is not None
            series.points.add(metric_date=point.day.isoformat(), value=float(point.value))
        return response

    async def GetStageFunnel(
        self, request: metrics_pb2.GetStageFunnelRequest, context: Context
    ) -> metrics_pb2.GetStageFunnelResponse:
        violations = Violations()
        days = parse_range(request.start_date, request.end_date, violations)
        violations.check()
        assert days is not None
        return metrics_pb2.GetStageFunnelResponse(
            stages=[
                metrics_pb2.FunnelStage(
                    lifecycle_stage=stage_value(step.stage),
                    entered=step.entered,
                    conversion_rate=step.conversion_rate,
                )
                for step in await self._reports.funnel(*days)
            ]
        )

    async def GetEventFunnel(
        self, request: metrics_pb2.GetEventFunnelRequest, context: Context
    ) -> metrics_pb2.GetEventFunnelResponse:
        return funnel_response(await self._reports.event_funnel(parse_funnel(request)))

    async def GetRetention(
        self, request: metrics_pb2.GetRetentionRequest, context: Context
    ) -> metrics_pb2.GetRetentionResponse:
        return retention_response(await self._reports.retention(parse_retention(request)))

    async def GetStageSnapshot(
        self, request: metrics_pb2.GetStageSnapshotRequest, context: Context
    ) -> metrics_pb2.GetStageSnapshotResponse:
        taken = self._clock.now()
        snapshot = await self._reports.snapshot()
        return metrics_pb2.GetStageSnapshotResponse(
            stages=[
                metrics_pb2.StagePopulation(lifecycle_stage=stage_value(stage), users=users)
                for stage, users in snapshot.populations.items()
            ],
            snapshot_time=timestamp(taken),
            rolled_up_through=snapshot.rolled_up_through.isoformat()
            if snapshot.rolled_up_through
            else "",
        )
