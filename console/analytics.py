"""Event analytics (docs/metrics.md, "Event analytics"): a funnel builder
over the metrics service's GetEventFunnel and a retention table over its
GetRetention. Each page is a GET form whose report shows once it is sent.
What the form cannot make a request of (a condition that is not JSON, too
many steps, an unknown period) is a message on the page (400), as is what the
service refuses, with the fields it named; the form keeps what was typed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.calls import CallProblem, call_problem
from console.conditions_text import Phrase, describe
from console.web import render, services
from lifecycle.metrics.v1 import metrics_pb2
from runtime.lifecycle_events import EVENT_TYPES, TRACKED_PREFIX

# The builder's steps; the API takes up to 10, a form of 5 rows reads well.
MAX_STEPS = 5
DEFAULT_DAYS = 30
ORDERS = {
    "ordered": metrics_pb2.FUNNEL_ORDER_ORDERED,
    "strict": metrics_pb2.FUNNEL_ORDER_STRICT,
    "any": metrics_pb2.FUNNEL_ORDER_ANY,
}
PERIODS = {
    "day": metrics_pb2.RETENTION_PERIOD_DAY,
    "week": metrics_pb2.RETENTION_PERIOD_WEEK,
    "month": metrics_pb2.RETENTION_PERIOD_MONTH,
}
WINDOW_UNITS = {"hours": timedelta(hours=1), "days": timedelta(days=1)}
BREAKDOWNS = ("", "stage", "attribute")
# Breakdown groups the chart draws beside everybody (the table lists them all).
CHARTED_GROUPS = 8
# Event types to suggest in the form: the log's own and a family of the tracked.
SUGGESTED_TYPES = sorted(EVENT_TYPES | {f"{TRACKED_PREFIX}*"})
# Deeper, a condition's Struct would nest more messages than protobuf decodes
# (100; three per object); the language's own limit is far below (docs/conditions.md).
MAX_JSON_DEPTH = 30
_WHOLE = re.compile(r"\d{1,9}", re.ASCII)


class FormProblem(Exception):
    """A field of the form that makes no request."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.problem = CallProblem(
            "INVALID_ARGUMENT", "the form cannot be sent as it is", [(field, description)], 400
        )


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large a number")
    return number


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in a JSON value (a scalar: 0)."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            pending.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def match(event_type: str, where: str, field: str) -> metrics_pb2.EventMatch:
    """An EventMatch of a type and a condition typed as JSON (empty: none)."""
    found = metrics_pb2.EventMatch(event_type=event_type.strip())
    if not where.strip():
        return found
    try:
        condition = json.loads(where, parse_constant=_no_constant, parse_float=_finite)
        if not isinstance(condition, dict):
            raise FormProblem(field, "must be a JSON object: a condition (docs/conditions.md)")
        if _depth(condition) > MAX_JSON_DEPTH:
            raise FormProblem(field, f"is nested more than {MAX_JSON_DEPTH} levels deep")
        found.condition.update(condition)
    except json.JSONDecodeError as error:
        raise FormProblem(
            field, f"is not JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except (ValueError, OverflowError, RecursionError) as error:
        # A Struct holds numbers as doubles: an integer beyond them is refused too.
        raise FormProblem(field, f"is not JSON this form can send: {error}") from None
    return found


def _whole(params: QueryParams, name: str, default: str) -> int:
    value = params.get(name, "").strip() or default
    if not _WHOLE.fullmatch(value):
        raise FormProblem(name, "must be a whole number")
    return int(value)


def _choice(params: QueryParams, name: str, choices: Any, default: str) -> str:
    value = params.get(name, "") or default
    if value not in choices:
        raise FormProblem(name, f"must be one of {', '.join(c or '(none)' for c in choices)}")
    return value


def _dates(params: QueryParams) -> tuple[str, str]:
    """The range as typed (the service checks it), by default the last 30 days."""
    today = datetime.now(UTC).date()
    start = params.get("start") or (today - timedelta(days=DEFAULT_DAYS - 1)).isoformat()
    return start, params.get("end") or today.isoformat()


def typed_rows(params: QueryParams) -> list[tuple[str, str]]:
    """The step rows typed in: (event type, condition), the empty ones left out."""
    rows = zip_longest(params.getlist("step"), params.getlist("where"), fillvalue="")
    return [(t.strip(), w) for t, w in rows if t.strip() or w.strip()]


def steps_of(params: QueryParams) -> list[metrics_pb2.EventMatch]:
    """The funnel's steps; each row is named by its place among those typed,
    as the form shows them again and as the service names them."""
    rows = typed_rows(params)
    if not 2 <= len(rows) <= MAX_STEPS:
        raise FormProblem("step", f"a funnel has 2 to {MAX_STEPS} steps, not {len(rows)}")
    for index, (event_type, _) in enumerate(rows):
        if not event_type:
            raise FormProblem(f"steps[{index}]", "has a condition but no event type")
    return [match(t, w, f"steps[{i}].condition") for i, (t, w) in enumerate(rows)]


def funnel_request(params: QueryParams) -> metrics_pb2.GetEventFunnelRequest:
    steps = steps_of(params)
    unit = _choice(params, "unit", WINDOW_UNITS, "days")
    window = duration_pb2.Duration(
        seconds=_whole(params, "window", "14") * int(WINDOW_UNITS[unit].total_seconds())
    )
    start, end = _dates(params)
    request = metrics_pb2.GetEventFunnelRequest(
        steps=steps,
        conversion_window=window,
        start_date=start,
        end_date=end,
        order=ORDERS[_choice(params, "order", ORDERS, "ordered")],
    )
    by = _choice(params, "by", BREAKDOWNS, "")
    if by == "stage":
        request.breakdown.stage = True
    elif by == "attribute":
        request.breakdown.data_key = params.get("key", "").strip()
    return request


def retention_request(params: QueryParams) -> metrics_pb2.GetRetentionRequest:
    start, end = _dates(params)
    return metrics_pb2.GetRetentionRequest(
        cohort_event=match(
            params.get("cohort", ""), params.get("cohort_where", ""), "cohort_event.condition"
        ),
        return_event=match(
            params.get("return", ""), params.get("return_where", ""), "return_event.condition"
        ),
        period=PERIODS[_choice(params, "period", PERIODS, "week")],
        periods=_whole(params, "periods", "4"),
        start_date=start,
        end_date=end,
    )


def span(value: duration_pb2.Duration) -> str:
    """A duration in its two largest units: "1 d 4 h", "15 min", "42 s"."""
    seconds = value.seconds + (1 if value.nanos >= 500_000_000 else 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2])


@dataclass(frozen=True)
class StepRow:
    """A step of the funnel as the table shows it."""

    number: int
    event_type: str
    condition: Phrase | None
    people: int
    from_previous: str
    from_first: str
    median: str


def step_rows(
    request: metrics_pb2.GetEventFunnelRequest, steps: list[metrics_pb2.EventFunnelStep]
) -> list[StepRow]:
    return [
        StepRow(
            number,
            asked.event_type,
            describe(json_format.MessageToDict(asked.condition))
            if asked.condition.fields
            else None,
            step.people,
            f"{step.conversion_from_previous:.1%}",
            f"{step.conversion_from_first:.1%}",
            span(step.median_time_from_previous)
            if step.HasField("median_time_from_previous")
            else "—",
        )
        for number, (asked, step) in enumerate(zip(request.steps, steps, strict=True), 1)
    ]


def breakdown_label(value: str) -> str:
    """A group's value as shown ("(none)": the first step's event has none)."""
    return value or "(none)"


def chart_data(
    request: metrics_pb2.GetEventFunnelRequest, reply: metrics_pb2.GetEventFunnelResponse
) -> str:
    """What static/analytics.js draws: people per step, for everybody and the
    largest groups (a data attribute: the CSP allows no inline script)."""
    series = [("everybody", reply.steps)] + [
        (breakdown_label(group.breakdown_value), group.steps)
        for group in reply.breakdown[:CHARTED_GROUPS]
    ]
    return json.dumps(
        {
            "labels": [f"{n}. {step.event_type}" for n, step in enumerate(request.steps, 1)],
            "series": [
                {"label": label, "people": [step.people for step in steps]}
                for label, steps in series
            ],
        },
        ensure_ascii=False,
    )


def _rows(params: QueryParams) -> list[tuple[str, str]]:
    """The form's step rows: those typed, then empty ones up to MAX_STEPS."""
    typed = typed_rows(params)
    return typed + [("", "")] * (MAX_STEPS - len(typed))


async def funnel_page(request: Request) -> Response:
    params = request.query_params
    context: dict[str, Any] = {"form": params, "rows": _rows(params), "dates": _dates(params)}

    async def report() -> dict[str, Any]:
        asked = funnel_request(params)
        reply = await services(request).metrics.GetEventFunnel(asked)
        return {
            "steps": step_rows(asked, list(reply.steps)),
            "groups": [
                (breakdown_label(group.breakdown_value), step_rows(asked, list(group.steps)))
                for group in reply.breakdown
            ],
            "omitted": reply.omitted_breakdown_values,
            "chart": chart_data(asked, reply),
        }

    return await _report_page(request, "funnel.html", context, report if "step" in params else None)


@dataclass(frozen=True)
class Cell:
    """A cohort's period: the share who came back, its count, its shade (0-10)."""

    share: str
    returned: int
    shade: int


def cohort_cells(cohort: metrics_pb2.RetentionCohort, periods: int) -> list[Cell | None]:
    """A cell per period 0..periods; None for a period that has not begun."""
    cells: list[Cell | None] = [None] * (periods + 1)
    for value in cohort.values:
        cells[value.period] = Cell(f"{value.share:.1%}", value.returned, round(value.share * 10))
    return cells


async def retention_page(request: Request) -> Response:
    params = request.query_params
    context: dict[str, Any] = {"form": params, "dates": _dates(params)}

    async def report() -> dict[str, Any]:
        asked = retention_request(params)
        reply = await services(request).metrics.GetRetention(asked)
        return {
            "periods": range(asked.periods + 1),
            "cohorts": [(c, cohort_cells(c, asked.periods)) for c in reply.cohorts],
        }

    return await _report_page(
        request, "retention.html", context, report if "cohort" in params else None
    )


async def _report_page(
    request: Request,
    template: str,
    context: dict[str, Any],
    report: Callable[[], Awaitable[dict[str, Any]]] | None,
) -> Response:
    """The form alone until it is sent (`report` None); then the report, or the
    form with the problem of its values or of the call."""
    if report is not None:
        try:
            context.update(await report())
        except FormProblem as refused:
            return _page(request, template, context, refused.problem)
        except grpc.aio.AioRpcError as error:
            return _page(request, template, context, call_problem(error))
    return _page(request, template, context, None)


def _page(
    request: Request, template: str, context: dict[str, Any], problem: CallProblem | None
) -> Response:
    return render(
        request,
        template,
        problem.http_status if problem else 200,
        problem=problem,
        suggested_types=SUGGESTED_TYPES,
        orders=ORDERS,
        periods_named=PERIODS,
        units=WINDOW_UNITS,
        **context,
    )


ROUTES = [Route("/analytics", funnel_page), Route("/analytics/retention", retention_page)]
