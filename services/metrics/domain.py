"""The rules of the metrics service: what a valid lifecycle event is, which
daily metrics exist (docs/metrics.md defines each), and how aggregates read
from the event log become metric rows. No I/O here."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from lifecycle.metrics.v1 import metrics_pb2
from runtime import wire_checks
from runtime.chains import Chain
from runtime.errors import Violations
from runtime.lifecycle_events import is_known_event_type
from runtime.parsing import parse_date_range
from runtime.partitions import PartitionedTable, partition_name, period_start, shift
from runtime.stages import STAGES, stage_name
from runtime.structs import JsonObject, compact_json, json_object

EVENTS_TABLE = PartitionedTable("lifecycle_events", "month", ahead=3)
METRICS_TABLE = PartitionedTable("metrics_daily", "year", ahead=3, timestamped=False)
# metrics_daily.lifecycle_stage of a metric taken across every stage.
ALL_STAGES = "all"
MAX_EVENT_TYPE_LENGTH = 100
MAX_PRODUCER_LENGTH = 50
MAX_EVENT_DATA_BYTES = 64 * 1024
# Longest range a rollup, a metrics query or a funnel may cover (about 3 years,
# the retention of metrics_daily).
MAX_RANGE_DAYS = 1100
# Event partitions older than this are archived; daily metrics older than this removed.
EVENT_RETENTION_MONTHS = 24
METRICS_RETENTION_YEARS = 3

CREATED, STAGE_CHANGED, ERASED = "user.created", "user.stage_changed", "user.erased"
TRANSITION_TYPES = (CREATED, STAGE_CHANGED, ERASED)
# Events that must name their user, and events that must name a stage.
_USER_REQUIRED = frozenset({CREATED, STAGE_CHANGED, "user.attributes_changed"})
_STAGE_REQUIRED = frozenset(TRANSITION_TYPES)

# Event types counted as a metric of their own, and the data key each one is
# broken down by (a `dimensions` of {key: value}).
EVENT_COUNTS = {
    CREATED: "users_created",
    ERASED: "users_erased",
    "execution.started": "executions_started",
    "execution.completed": "executions_completed",
    "execution.failed": "executions_failed",
    "execution.cancelled": "executions_cancelled",
    "trigger.fired": "triggers_fired",
    "segment.entered": "segment_entries",
    "segment.exited": "segment_exits",
}
BREAKDOWNS = {
    "execution.started": "workflow_id",
    "execution.completed": "workflow_id",
    "execution.failed": "workflow_id",
    "execution.cancelled": "workflow_id",
    "trigger.fired": "trigger_id",
    "segment.entered": "segment_id",
    "segment.exited": "segment_id",
}
# The metrics the rollup writes, by the pass that computes them.
COUNT_METRICS = ("events", *EVENT_COUNTS.values())
FLOW_METRICS = (
    "entries",
    "exits",
    "net_flow",
    "conversions",
    "time_in_stage_p50",
    "time_in_stage_p90",
)
ACTIVITY_METRICS = ("active_users",)
EVENT_METRICS = COUNT_METRICS + FLOW_METRICS + ACTIVITY_METRICS
POPULATION_METRICS = ("population_eod", "conversion_rate")
METRIC_NAMES = frozenset(EVENT_METRICS + POPULATION_METRICS)

T = TypeVar("T")
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STAGE_NAMES = frozenset(STAGES)


@dataclass
class EventRows:
    """Valid events of a batch, column by column, as RecordEvents stores them."""

    positions: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    user_ids: list[str | None] = field(default_factory=list)
    execution_ids: list[str | None] = field(default_factory=list)
    stages: list[str | None] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    actors: list[Chain] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def partitions(self) -> list[str]:
        """The lifecycle_events partition each row belongs in."""
        return [_month_partition(moment) for moment in self.times]

    def subset(self, keep: Sequence[int]) -> EventRows:
        """The rows at the given offsets (offsets into this batch, not positions)."""
        return EventRows(
            _pick(self.positions, keep),
            _pick(self.event_ids, keep),
            _pick(self.event_types, keep),
            _pick(self.user_ids, keep),
            _pick(self.execution_ids, keep),
            _pick(self.stages, keep),
            _pick(self.data, keep),
            _pick(self.times, keep),
            _pick(self.producers, keep),
            _pick(self.actors, keep),
        )


def _pick(column: list[T], offsets: Sequence[int]) -> list[T]:
    return [column[k] for k in offsets]


@dataclass(frozen=True)
class RefusedEvent:
    """An event of a batch that was not stored, and why."""

    position: int
    event_id: str
    field: str
    description: str
    # False for a well-formed event that has no partition to land in.
    malformed: bool = True

    @property
    def field_path(self) -> str:
        event = f"events[{self.position}]"
        return f"{event}.{self.field}" if self.field else event


def _uuid_text(value: str) -> str | None:
    """The UUID as PostgreSQL reads it, or None when it is not one."""
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _event_problem(event: metrics_pb2.LifecycleEvent, data: JsonObject) -> tuple[str, str] | None:
    """The first thing wrong with an event (field, description), or None."""
    event_type = event.event_type
    if not is_known_event_type(event_type) or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        return "event_type", f"{event_type!r} is not a lifecycle event type"
    if event.user_id and _uuid_text(event.user_id) is None:
        return "user_id", "must be a UUID"
    if not event.user_id and event_type in _USER_REQUIRED:
        return "user_id", f"is required for {event_type}"
    if event.workflow_execution_id and _uuid_text(event.workflow_execution_id) is None:
        return "workflow_execution_id", "must be a UUID"
    if event.lifecycle_stage and stage_name(event.lifecycle_stage) is None:
        return "lifecycle_stage", f"{event.lifecycle_stage} is not a lifecycle stage"
    if not event.lifecycle_stage and event_type in _STAGE_REQUIRED:
        return "lifecycle_stage", f"is required for {event_type}"
    left = data.get("from_stage")
    if event_type == STAGE_CHANGED and not (isinstance(left, str) and left in _STAGE_NAMES):
        return "data.from_stage", "must name the stage the user left"
    producer = event.producer
    if not producer or len(producer) > MAX_PRODUCER_LENGTH:
        return "producer", f"is required, at most {MAX_PRODUCER_LENGTH} characters"
    return None


def _data_problem(data_json: str) -> tuple[str, str] | None:
    if len(data_json.encode()) > MAX_EVENT_DATA_BYTES:
        return "data", f"must be at most {MAX_EVENT_DATA_BYTES} bytes as JSON"
    return None


def parse_events(
    events: Iterable[metrics_pb2.LifecycleEvent],
) -> tuple[EventRows, list[RefusedEvent]]:
    """Splits a batch into the rows to store and the events refused as malformed."""
    rows = EventRows()
    refused: list[RefusedEvent] = []
    for position, event in enumerate(events):
        event_id = _uuid_text(event.event_id)
        if event_id is None:
            shown = event.event_id[:40]
            refused.append(RefusedEvent(position, shown, "event_id", "must be a UUID"))
            continue
        violations = Violations()
        data = json_object(event.data, "data", violations)
        if not wire_checks.item_clean(event, violations) or data is None:
            first = violations.items[0]
            refused.append(RefusedEvent(position, event_id, first.field, first.description))
            continue
        if not event.HasField("event_time"):
            refused.append(RefusedEvent(position, event_id, "event_time", "is required"))
            continue
        data_json = compact_json(data)
        problem = _event_problem(event, data) or _data_problem(data_json)
        if problem is not None:
            refused.append(RefusedEvent(position, event_id, *problem))
            continue
        stamp = event.event_time
        moment = _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
        rows.positions.append(position)
        rows.event_ids.append(event_id)
        rows.event_types.append(event.event_type)
        rows.user_ids.append(_uuid_text(event.user_id) if event.user_id else None)
        rows.execution_ids.append(
            _uuid_text(event.workflow_execution_id) if event.workflow_execution_id else None
        )
        rows.stages.append(stage_name(event.lifecycle_stage))
        rows.data.append(data_json)
        rows.times.append(moment)
        rows.producers.append(event.producer)
        rows.actors.append(tuple(event.actors))
    return rows, refused


def _month_partition(moment: datetime) -> str:
    return partition_name(EVENTS_TABLE, period_start(moment.date(), "month"))


def outside_partitions(
    rows: EventRows, partitions: set[str]
) -> tuple[list[int], list[RefusedEvent]]:
    """Offsets of the rows that have a partition to land in, and the others refused."""
    inside: list[int] = []
    outside: list[int] = []
    for offset, name in enumerate(rows.partitions()):
        (inside if name in partitions else outside).append(offset)
    return inside, refused_outside(rows, outside)


def refused_rows(rows: EventRows, offsets: Iterable[int], why: str) -> list[RefusedEvent]:
    """The rows at `offsets`, refused as a whole for `why`."""
    return [RefusedEvent(rows.positions[o], rows.event_ids[o], "", why) for o in offsets]


def refused_outside(rows: EventRows, offsets: Iterable[int]) -> list[RefusedEvent]:
    """The rows at `offsets`, refused for want of a partition."""
    return [
        RefusedEvent(
            rows.positions[offset],
            rows.event_ids[offset],
            "event_time",
            f"{rows.times[offset].isoformat()} is outside the stored range: partition"
            f" {_month_partition(rows.times[offset])} does not exist (not created yet, or"
            " archived); see `lifecycle maintenance`",
            malformed=False,
        )
        for offset in offsets
    ]


def parse_range(
    start: str, end: str, violations: Violations, *, prefix: str = ""
) -> tuple[date, date] | None:
    """An inclusive date range of at most MAX_RANGE_DAYS days."""
    return parse_date_range(start, end, violations, max_days=MAX_RANGE_DAYS, prefix=prefix)


def day_start(day: date) -> datetime:
    """The first instant of a UTC day: days are UTC days (docs/metrics.md)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def trailing_window(
    today: date,
    late_days: int,
    last_rolled: date | None,
    first_event: date | None,
    logged_since: date | None = None,
) -> tuple[date, date] | None:
    """The days the scheduled rollup recomputes: today and the `late_days` before
    it, reaching back to the first day not rolled up yet after a pause (at most
    MAX_RANGE_DAYS back, and never before `logged_since`, the first day whose
    events are not archived)."""
    start = today - timedelta(days=late_days)
    behind = last_rolled + timedelta(days=1) if last_rolled else first_event
    if behind is not None:
        start = max(min(start, behind), today - timedelta(days=MAX_RANGE_DAYS - 1))
    if logged_since is not None:
        start = max(start, logged_since)
    return (start, today) if start <= today else None


@dataclass(frozen=True)
class MetricRow:
    day: date
    stage: str
    name: str
    dimensions: str
    value: str


_NO_DIMENSIONS = "{}"


def _dimensions(key: str, value: str) -> str:
    return compact_json({key: value})


def _number(value: float, digits: int) -> str:
    return repr(round(value, digits))


@dataclass(frozen=True)
class EventCount:
    """count(*) of one group of the rollup's count pass, grouped by (day, type)
    ("all"), (day, type, stage) ("stage") or (day, type, subject) ("subject")."""

    day: date
    event_type: str
    grouping: str
    stage: str | None
    subject: str | None
    count: int


def count_rows(counts: Iterable[EventCount]) -> list[MetricRow]:
    totals: dict[tuple[date, str], int] = defaultdict(int)
    rows = []
    for c in counts:
        metric = EVENT_COUNTS.get(c.event_type)
        if c.grouping == "subject":
            if c.subject is not None and metric is not None and c.event_type in BREAKDOWNS:
                dims = _dimensions(BREAKDOWNS[c.event_type], c.subject)
                rows.append(MetricRow(c.day, ALL_STAGES, metric, dims, str(c.count)))
            continue
        stage = ALL_STAGES if c.grouping == "all" else c.stage
        if stage is None:
            continue
        totals[c.day, stage] += c.count
        by_type = _dimensions("event_type", c.event_type)
        rows.append(MetricRow(c.day, stage, "events", by_type, str(c.count)))
        if metric is not None:
            rows.append(MetricRow(c.day, stage, metric, _NO_DIMENSIONS, str(c.count)))
    rows += [
        MetricRow(day, stage, "events", _NO_DIMENSIONS, str(total))
        for (day, stage), total in totals.items()
    ]
    return rows


@dataclass(frozen=True)
class Moves:
    """Transitions of one (day, from stage, to stage) group of the flow pass;
    `to_stage` is None in the group of every move out of `from_stage`."""

    day: date
    from_stage: str | None
    to_stage: str | None
    all_targets: bool
    count: int
    dwell_p50: float | None
    dwell_p90: float | None


def flow_rows(groups: Iterable[Moves]) -> list[MetricRow]:
    entries: dict[tuple[date, str], int] = defaultdict(int)
    exits: dict[tuple[date, str], int] = defaultdict(int)
    rows = []
    for g in groups:
        dims = _NO_DIMENSIONS if g.all_targets else _dimensions("to_stage", g.to_stage or "")
        if g.from_stage is not None and (g.all_targets or g.to_stage is not None):
            for name, value in (
                ("time_in_stage_p50", g.dwell_p50),
                ("time_in_stage_p90", g.dwell_p90),
            ):
                if value is not None:
                    rows.append(MetricRow(g.day, g.from_stage, name, dims, _number(value, 3)))
        if g.all_targets:
            continue
        if g.to_stage is not None:
            entries[g.day, g.to_stage] += g.count
        if g.from_stage is not None:
            exits[g.day, g.from_stage] += g.count
        if g.from_stage is not None and g.to_stage is not None:
            rows.append(MetricRow(g.day, g.from_stage, "conversions", dims, str(g.count)))
    for key in entries.keys() | exits.keys():
        day, stage = key
        for name, value in (
            ("entries", entries.get(key, 0)),
            ("exits", exits.get(key, 0)),
            ("net_flow", entries.get(key, 0) - exits.get(key, 0)),
        ):
            rows.append(MetricRow(day, stage, name, _NO_DIMENSIONS, str(value)))
    return rows


def activity_rows(active: Iterable[tuple[date, str | None, bool, int]]) -> list[MetricRow]:
    """active_users from (day, stage, across all stages, distinct users)."""
    rows = []
    for day, stage, across, users in active:
        where = ALL_STAGES if across else stage
        if where is not None:
            rows.append(MetricRow(day, where, "active_users", _NO_DIMENSIONS, str(users)))
    return rows


def population_rows(
    days: Sequence[date],
    base: Mapping[str, int],
    net_flow: Mapping[tuple[date, str], int],
    conversions: Mapping[tuple[date, str], Mapping[str, int]],
) -> list[MetricRow]:
    """population_eod of every stage and day from the population at the end of
    the day before `days[0]`, and conversion_rate from the population at the
    start of each day."""
    population = {stage: base.get(stage, 0) for stage in STAGES}
    rows = []
    for day in days:
        for stage in STAGES:
            at_start = population[stage]
            for to_stage, count in conversions.get((day, stage), {}).items():
                if at_start > 0:
                    rate = _number(count / at_start, 6)
                    dims = _dimensions("to_stage", to_stage)
                    rows.append(MetricRow(day, stage, "conversion_rate", dims, rate))
            population[stage] = at_start + net_flow.get((day, stage), 0)
            rows.append(
                MetricRow(day, stage, "population_eod", _NO_DIMENSIONS, str(population[stage]))
            )
    return rows


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@dataclass(frozen=True)
class EventFilter:
    """What ListEvents asks of the log."""

    user_id: uuid.UUID | None = None
    event_types: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    workflow_execution_id: uuid.UUID | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Events whose actors include it.
    actor: str | None = None


@dataclass(frozen=True)
class LoggedEvent:
    """An event as the log holds it."""

    # The log's own id, which orders events of the same time.
    id: int
    event_id: uuid.UUID
    event_type: str
    user_id: uuid.UUID | None
    workflow_execution_id: uuid.UUID | None
    stage: str | None
    data: JsonObject
    created_at: datetime
    producer: str | None
    actors: tuple[str, ...]


@dataclass(frozen=True)
class MetricQuery:
    """What GetMetrics asks of the daily metrics."""

    first: date
    last: date
    names: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    dimensions: str = "{}"


@dataclass(frozen=True)
class MetricPoint:
    """The value of a daily metric on one day."""

    name: str
    # A stage, or ALL_STAGES.
    stage: str
    dimensions: JsonObject
    day: date
    value: Decimal


def partition_range(spec: PartitionedTable, name: str) -> tuple[date, date] | None:
    """The [start, end) of a partition named by runtime.partitions, else None."""
    prefix = f"{spec.table}_"
    parts = name.removeprefix(prefix).split("_")
    if not name.startswith(prefix) or len(parts) != (2 if spec.period == "month" else 1):
        return None
    try:
        start = date(int(parts[0]), int(parts[1]) if spec.period == "month" else 1, 1)
    except ValueError:
        return None
    return start, shift(start, spec.period, 1)


def _years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


def event_cutoff(today: date) -> date:
    """Event partitions ending on or before this day are archived."""
    return _years_before(today, EVENT_RETENTION_MONTHS // 12)


def metrics_cutoff(today: date) -> date:
    """metrics_daily rows before this day are removed."""
    return _years_before(today, METRICS_RETENTION_YEARS)
