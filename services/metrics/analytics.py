"""Event analytics over the lifecycle event log: funnels of any events and
retention cohorts (docs/metrics.md, "Event funnels" and "Retention").

The requests are parsed here into typed queries, every bad field named; the
queries run as SQL in `store.analytics`; what comes back is turned into rates
and periods here. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import TypeVar

from conditions import Condition, Scope, parse_condition
from conditions.model import AllOf, AnyOf, AttributeLeaf, Node, Not
from lifecycle.metrics.v1 import metrics_pb2
from runtime.errors import InvalidArgument, Violations
from runtime.lifecycle_events import is_known_event_type
from runtime.structs import json_object
from services.metrics.domain import MAX_EVENT_TYPE_LENGTH, day_start, parse_range

MIN_STEPS, MAX_STEPS = 2, 10
MAX_WINDOW = timedelta(days=90)
MAX_PERIODS = 100
# Breakdown values an answer lists, the most people first.
MAX_BREAKDOWN_VALUES = 50
LAST_DAY = date(9989, 12, 31)
FAMILY = ".*"
# A family's prefix: lower-case dotted names, as event types are.
_PREFIX = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_DATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,7}")
# The event-data leaves the SQL of store.event_match compiles.
DATA_OPERATORS = frozenset(
    {"eq", "neq", "in", "not_in", "exists", "not_exists", "gt", "gte", "lt", "lte"}
    | {"between", "not_between", "contains", "not_contains", "starts_with", "ends_with"}
)
E = TypeVar("E", bound=Enum)
_EVENT_DATA = Scope(events=True, no_segments="in_segment reads segments, not an event's data")


class Order(Enum):
    ORDERED = metrics_pb2.FUNNEL_ORDER_ORDERED
    STRICT = metrics_pb2.FUNNEL_ORDER_STRICT
    ANY = metrics_pb2.FUNNEL_ORDER_ANY


class Period(Enum):
    DAY = metrics_pb2.RETENTION_PERIOD_DAY
    WEEK = metrics_pb2.RETENTION_PERIOD_WEEK
    MONTH = metrics_pb2.RETENTION_PERIOD_MONTH

    def start_of(self, day: date) -> date:
        """The first day of the period `day` is in."""
        if self is Period.DAY:
            return day
        if self is Period.WEEK:
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)

    def after(self, start: date, count: int) -> date:
        """The first day of the period `count` periods after the one starting on `start`."""
        if self is Period.DAY:
            return start + timedelta(days=count)
        if self is Period.WEEK:
            return start + timedelta(weeks=count)
        months = start.year * 12 + start.month - 1 + count
        return date(months // 12, months % 12 + 1, 1)


@dataclass(frozen=True)
class EventMatch:
    """Events of a type (or, with `prefix`, of every type starting with
    `event_type`, which then ends with a dot) whose data match `condition`."""

    event_type: str
    prefix: bool
    condition: Condition | None = None


@dataclass(frozen=True)
class Breakdown:
    # None: the stage the first step's event names; else a path in its data.
    data_keys: tuple[str, ...] | None


@dataclass(frozen=True)
class FunnelQuery:
    steps: tuple[EventMatch, ...]
    window: timedelta
    first: date
    last: date
    order: Order
    breakdown: Breakdown | None

    @property
    def start(self) -> datetime:
        return day_start(self.first)

    @property
    def end(self) -> datetime:
        """The end (exclusive) of the first step's range."""
        return day_start(self.last + timedelta(days=1))


@dataclass(frozen=True)
class RetentionQuery:
    cohort: EventMatch
    returning: EventMatch
    period: Period
    periods: int
    first: date
    last: date

    @property
    def start(self) -> datetime:
        return day_start(self.first)

    @property
    def end(self) -> datetime:
        """The end (exclusive) of the cohort events' range."""
        return day_start(self.last + timedelta(days=1))

    @property
    def returns_end(self) -> datetime:
        """The end of the last period any cohort of the range reports."""
        return day_start(self.period.after(self.period.start_of(self.last), self.periods + 1))


def parse_match(
    message: metrics_pb2.EventMatch, field: str, violations: Violations
) -> EventMatch | None:
    """The EventMatch of a request, every problem added under `field`."""
    event_type = message.event_type
    prefix = event_type.endswith(FAMILY)
    name = event_type[: -len(FAMILY)] if prefix else event_type
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        violations.add(f"{field}.event_type", f"must be at most {MAX_EVENT_TYPE_LENGTH} characters")
        return None
    if not event_type:
        violations.add(f"{field}.event_type", "is required")
        return None
    if prefix and not _PREFIX.fullmatch(name):
        violations.add(f"{field}.event_type", "must be a family like tracked.* (a dotted prefix)")
        return None
    if not prefix and not is_known_event_type(name):
        violations.add(
            f"{field}.event_type",
            f"{name!r} is not an event type of the log (docs/architecture.md), nor a family"
            " like tracked.*",
        )
        return None
    known = len(violations.items)
    condition = _data_condition(message, f"{field}.condition", violations)
    if len(violations.items) > known:
        return None
    return EventMatch(name + "." if prefix else name, prefix, condition)


def _data_condition(
    message: metrics_pb2.EventMatch, field: str, violations: Violations
) -> Condition | None:
    """The condition; None when empty, or when bad (the problems added)."""
    data = json_object(message.condition, field, violations)
    if not data:
        return None
    try:
        condition = parse_condition(data, field, _EVENT_DATA)
    except InvalidArgument as error:
        violations.items.extend(error.violations)
        return None
    refused = [node for node in condition.nodes() if not _compiles(node)]
    for node in refused:
        violations.add(
            f"{field}.{node.location}" if node.location else field,
            'analytics read the event\'s data only: attribute leaves with "src": "event"'
            f" and the operators {', '.join(sorted(DATA_OPERATORS))} (docs/metrics.md)",
        )
    return None if refused else condition


def _compiles(node: Node) -> bool:
    """Whether store.event_match compiles the node."""
    if isinstance(node, AllOf | AnyOf | Not):
        return True
    return (
        isinstance(node, AttributeLeaf)
        and node.source == "event"
        and node.op.name in DATA_OPERATORS
    )


def parse_funnel(request: metrics_pb2.GetEventFunnelRequest) -> FunnelQuery:
    violations = Violations()
    if not MIN_STEPS <= len(request.steps) <= MAX_STEPS:
        violations.add("steps", f"must list {MIN_STEPS} to {MAX_STEPS} steps")
    steps = [parse_match(step, f"steps[{i}]", violations) for i, step in enumerate(request.steps)]
    window = _window(request, violations)
    days = _range(request, violations)
    order = _enum(Order, request.order or Order.ORDERED.value, "order", violations)
    breakdown = _breakdown(request, violations)
    violations.check()
    assert window is not None and days is not None and order is not None
    matched = tuple(step for step in steps if step is not None)
    return FunnelQuery(matched, window, *days, order, breakdown)


def _range(
    request: metrics_pb2.GetEventFunnelRequest | metrics_pb2.GetRetentionRequest,
    violations: Violations,
) -> tuple[date, date] | None:
    days = parse_range(request.start_date, request.end_date, violations)
    if days is not None and days[1] > LAST_DAY:
        # The window or the periods after it must stay within the calendar.
        violations.add("end_date", f"must be at most {LAST_DAY}")
        return None
    return days


def _window(request: metrics_pb2.GetEventFunnelRequest, violations: Violations) -> timedelta | None:
    window = request.conversion_window.ToTimedelta()
    if not request.HasField("conversion_window") or window <= timedelta(0):
        violations.add("conversion_window", "must be a positive duration")
    elif window > MAX_WINDOW:
        violations.add("conversion_window", f"must be at most {MAX_WINDOW.days} days")
    else:
        return window
    return None


def _enum(kind: type[E], value: int, field: str, violations: Violations) -> E | None:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(member.name for member in kind)
        violations.add(field, f"must be one of {names}")
        return None


def _breakdown(
    request: metrics_pb2.GetEventFunnelRequest, violations: Violations
) -> Breakdown | None:
    if not request.HasField("breakdown"):
        return None
    by = request.breakdown.WhichOneof("by")
    if by == "data_key":
        key = request.breakdown.data_key
        if _DATA_KEY.fullmatch(key):
            return Breakdown(tuple(key.split(".")))
        violations.add(
            "breakdown.data_key",
            "must be a dotted path of at most 8 keys like utm.source, each starting with a"
            " letter or _ and made of letters, digits, _ and - (at most 64 characters)",
        )
    elif by == "stage" and request.breakdown.stage:
        return Breakdown(None)
    else:
        violations.add("breakdown", "must set stage (true) or data_key")
    return None


def parse_retention(request: metrics_pb2.GetRetentionRequest) -> RetentionQuery:
    violations = Violations()
    matches = {}
    for name in ("cohort_event", "return_event"):
        if request.HasField(name):
            matches[name] = parse_match(getattr(request, name), name, violations)
        else:
            violations.add(name, "is required")
    period = None
    if request.period == metrics_pb2.RETENTION_PERIOD_UNSPECIFIED:
        violations.add("period", "is required: DAY, WEEK or MONTH")
    else:
        period = _enum(Period, request.period, "period", violations)
    if not 1 <= request.periods <= MAX_PERIODS:
        violations.add("periods", f"must be 1 to {MAX_PERIODS}")
    days = _range(request, violations)
    violations.check()
    cohort, returning = matches["cohort_event"], matches["return_event"]
    assert cohort is not None and returning is not None and period and days is not None
    return RetentionQuery(cohort, returning, period, request.periods, *days)


@dataclass(frozen=True)
class FunnelCount:
    """What the funnel's SQL counts: the people of a group (`value` None: all
    of them) who reached a step (1-based), and the median time from the step
    before over them, in microseconds."""

    value: str | None
    step: int
    people: int
    median_micros: int | None


@dataclass(frozen=True)
class StepResult:
    people: int
    from_previous: float
    from_first: float
    median: timedelta | None


@dataclass(frozen=True)
class FunnelResult:
    steps: list[StepResult]
    breakdown: list[tuple[str, list[StepResult]]]
    omitted_values: int


def funnel_result(query: FunnelQuery, counts: list[FunnelCount]) -> FunnelResult:
    groups: dict[str | None, dict[int, FunnelCount]] = {None: {}}
    for count in counts:
        groups.setdefault(count.value, {})[count.step] = count
    size = len(query.steps)
    total = _steps(groups.pop(None), size)
    ranked = sorted(groups.items(), key=lambda item: (-item[1][1].people, item[0] or ""))
    listed = [(value or "", _steps(steps, size)) for value, steps in ranked[:MAX_BREAKDOWN_VALUES]]
    return FunnelResult(total, listed, max(0, len(ranked) - MAX_BREAKDOWN_VALUES))


def _steps(counts: dict[int, FunnelCount], size: int) -> list[StepResult]:
    people = [counts[j].people if j in counts else 0 for j in range(1, size + 1)]
    results = []
    for j, reached in enumerate(people):
        previous = people[j - 1] if j else people[0]
        median = counts[j + 1].median_micros if j and j + 1 in counts else None
        results.append(
            StepResult(
                reached,
                reached / previous if previous else 0.0,
                reached / people[0] if people[0] else 0.0,
                None if median is None else timedelta(microseconds=median),
            )
        )
    return results


@dataclass(frozen=True)
class CohortCount:
    """A cohort as the retention SQL counts it: its period's first day, its
    size, and the members who returned in each period 0..periods."""

    start: date
    size: int
    returned: list[int]


@dataclass(frozen=True)
class Cohort:
    start: date
    size: int
    # (period, its first day, members who returned in it), periods begun only.
    values: list[tuple[int, date, int]]


def retention_result(query: RetentionQuery, counts: list[CohortCount], today: date) -> list[Cohort]:
    cohorts = []
    for count in counts:
        values = [
            (n, query.period.after(count.start, n), returned)
            for n, returned in enumerate(count.returned)
        ]
        cohorts.append(Cohort(count.start, count.size, [v for v in values if v[1] <= today]))
    return cohorts


def funnel_response(result: FunnelResult) -> metrics_pb2.GetEventFunnelResponse:
    return metrics_pb2.GetEventFunnelResponse(
        steps=_step_messages(result.steps),
        breakdown=[
            metrics_pb2.EventFunnelGroup(breakdown_value=value, steps=_step_messages(steps))
            for value, steps in result.breakdown
        ],
        omitted_breakdown_values=result.omitted_values,
    )


def _step_messages(steps: list[StepResult]) -> list[metrics_pb2.EventFunnelStep]:
    messages = []
    for step in steps:
        message = metrics_pb2.EventFunnelStep(
            people=step.people,
            conversion_from_previous=step.from_previous,
            conversion_from_first=step.from_first,
        )
        if step.median is not None:
            message.median_time_from_previous.FromTimedelta(step.median)
        messages.append(message)
    return messages


def retention_response(cohorts: list[Cohort]) -> metrics_pb2.GetRetentionResponse:
    return metrics_pb2.GetRetentionResponse(
        cohorts=[
            metrics_pb2.RetentionCohort(
                period_start=cohort.start.isoformat(),
                size=cohort.size,
                values=[
                    metrics_pb2.RetentionValue(
                        period=n,
                        period_start=start.isoformat(),
                        returned=returned,
                        share=returned / cohort.size,
                    )
                    for n, start, returned in cohort.values
                ],
            )
            for cohort in cohorts
        ]
    )
