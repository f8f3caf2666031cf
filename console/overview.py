"""The overview: users per stage now, the stage funnel of a range, the daily
metrics (drawn by static/overview.js from /metrics.json), the open
incidents of each workflow and what waits in each service's outbox."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import grpc
from google.protobuf import duration_pb2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.calls import Services
from console.web import render, services
from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.operations.v1 import operations_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb

DEFAULT_DAYS = 30
# The charts: each a title and the metrics drawn, a line per stage (or across stages).
CHARTS = {
    "users": ("New and active users (all stages)", ("users_created", "active_users")),
    "entries": ("Stage entries", ("entries",)),
    "conversions": ("Conversions out of each stage", ("conversions",)),
}
_ACROSS_STAGES = ("users_created", "active_users")
# The outboxes are asked of the five services at once, each for this long at
# most: one that has not answered by then is shown as unreachable, and the
# page is not held up by it.
OUTBOX_DEADLINE_SECONDS = 1.0
_UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _date_range(request: Request) -> tuple[date, date]:
    """The range asked for (?start=&end=, ISO dates), by default the last 30 days."""
    try:
        end = date.fromisoformat(request.query_params.get("end") or _today().isoformat())
        start = date.fromisoformat(
            request.query_params.get("start")
            or (end - timedelta(days=DEFAULT_DAYS - 1)).isoformat()
        )
    except ValueError:
        raise HTTPException(400, "Dates are written YYYY-MM-DD.") from None
    if start > end:
        raise HTTPException(400, "The range starts after it ends.")
    return start, end


def _today() -> date:
    return datetime.now(UTC).date()


async def _open_incidents(calls: Services) -> list[tuple[pb.Workflow, int]]:
    """Each workflow of the first page with open incidents in its current version, and how many."""
    listed = await calls.workflows.ListWorkflows(pb.ListWorkflowsRequest(page_size=100))
    counted = await asyncio.gather(
        *(
            calls.workflows.GetWorkflowStatistics(
                pb.GetWorkflowStatisticsRequest(workflow_id=w.id, version=w.version)
            )
            for w in listed.workflows
        )
    )
    totals = [
        (w, sum(e.incidents for e in c.elements))
        for w, c in zip(listed.workflows, counted, strict=True)
    ]
    return [(w, n) for w, n in totals if n]


@dataclass(frozen=True)
class OutboxLine:
    """A topic of a service with something waiting (a row of the table)."""

    service: str
    topic: str
    pending: int
    oldest: str
    dead_letters: int
    last_error: str


@dataclass(frozen=True)
class Outboxes:
    lines: list[OutboxLine]
    # The services that did not answer, with why ("unreachable", or the refusal).
    unanswered: list[tuple[str, str]]


def _age(age: duration_pb2.Duration) -> str:
    """A wait as a person reads it: 45s, 3m 12s, 2h 5m, 3d 4h."""
    seconds = age.seconds
    if seconds < 60:
        return f"{seconds}s"
    units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
    big = next(n for n, (size, _) in enumerate(units) if seconds >= size)
    (first, first_unit), (second, second_unit) = units[big], units[big + 1]
    return f"{seconds // first}{first_unit} {seconds % first // second}{second_unit}"


def _outbox_lines(reply: operations_pb2.GetOutboxResponse) -> list[OutboxLine]:
    """Its topics with messages pending or dead, then the calls its own queues
    keep (an incident, whose retries ran out, counts with the dead letters)."""
    lines = [
        OutboxLine(
            reply.service,
            topic.topic,
            topic.pending,
            _age(topic.oldest_pending_age) if topic.pending else "—",
            topic.dead_letters,
            topic.last_error or topic.dead_letter_error,
        )
        for topic in reply.topics
        if topic.pending or topic.dead_letters
    ]
    for waiting in reply.elsewhere:
        pending = waiting.kind == "pending"
        lines.append(
            OutboxLine(
                reply.service,
                waiting.topic if pending else f"{waiting.topic} ({waiting.kind})",
                waiting.calls if pending else 0,
                _age(waiting.oldest_age) if waiting.HasField("oldest_age") else "—",
                0 if pending else waiting.calls,
                waiting.last_error,
            )
        )
    return lines


async def _outbox_of(calls: Services, service: str) -> list[OutboxLine] | str:
    """The lines of one service, or why it gave none."""
    try:
        reply = await calls.operations[service].GetOutbox(
            operations_pb2.GetOutboxRequest(), timeout=OUTBOX_DEADLINE_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in _UNREACHED:
            return "unreachable"
        return f"{error.code().name}: {error.details() or ''}"
    return _outbox_lines(reply)


async def _outboxes(calls: Services) -> Outboxes:
    names = list(calls.operations)
    answers = await asyncio.gather(*(_outbox_of(calls, name) for name in names))
    outboxes = Outboxes([], [])
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, str):
            outboxes.unanswered.append((name, answer))
        else:
            outboxes.lines.extend(answer)
    return outboxes


async def overview(request: Request) -> Response:
    start, end = _date_range(request)
    calls = services(request)
    snapshot, funnel, incidents, outboxes = await asyncio.gather(
        calls.metrics.GetStageSnapshot(metrics_pb2.GetStageSnapshotRequest()),
        calls.metrics.GetStageFunnel(
            metrics_pb2.GetStageFunnelRequest(
                start_date=start.isoformat(), end_date=end.isoformat()
            )
        ),
        _open_incidents(calls),
        _outboxes(calls),
    )
    return render(
        request,
        "overview.html",
        snapshot=snapshot,
        funnel=funnel.stages,
        incidents=incidents,
        outboxes=outboxes,
        start=start.isoformat(),
        end=end.isoformat(),
        charts=CHARTS,
    )


def _line_name(series: metrics_pb2.MetricSeries) -> str:
    if series.metric_name in _ACROSS_STAGES:
        return series.metric_name.replace("_", " ")
    return stage_pb2.LifecycleStage.Name(series.lifecycle_stage).removeprefix("LIFECYCLE_STAGE_")


async def metrics(request: Request) -> Response:
    """The charts' lines, each {label: {date: value}}, summed over other dimensions."""
    start, end = _date_range(request)
    reply = await services(request).metrics.GetMetrics(
        metrics_pb2.GetMetricsRequest(
            metric_names=[name for _, names in CHARTS.values() for name in names],
            start_date=start.isoformat(),
            end_date=end.isoformat(),
        )
    )
    lines: dict[str, dict[str, dict[str, float]]] = {key: {} for key in CHARTS}
    for series in reply.series:
        across = series.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED
        # The new and active users across stages; the others per stage.
        if across != (series.metric_name in _ACROSS_STAGES):
            continue
        chart = next(key for key, (_, names) in CHARTS.items() if series.metric_name in names)
        line = lines[chart].setdefault(_line_name(series), defaultdict(float))
        for point in series.points:
            line[point.metric_date] += point.value
    days = [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
    return JSONResponse({"days": days, "charts": lines})


ROUTES = [Route("/", overview), Route("/metrics.json", metrics)]
