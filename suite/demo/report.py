"""What the demo prints at the end: the stage funnel, the population now, the
segments, and daily metrics, read from the metrics service as any client would."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from runtime.stages import stage_name
from runtime.structs import struct_to_dict
from suite.demo.clients import Suite

# Daily columns: (heading, metric, dimensions it must have).
COLUMNS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("new users", "events", {"event_type": "tracked.signup"}),
    ("active", "active_users", {}),
    ("logins", "events", {"event_type": "tracked.login"}),
    ("purchases", "events", {"event_type": "tracked.purchase"}),
    ("invites", "events", {"event_type": "tracked.invite"}),
)
# The simulated days replay events with their own times, but triggers fire and
# executions run in real time: they are all counted on today's row, so they are
# shown as totals.
TOTALS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("workflow executions started", "executions_started", {}),
    ("executions completed", "executions_completed", {}),
    ("triggers fired", "triggers_fired", {}),
)


def table(headings: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headings]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    lines = ["  ".join(_aligned(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _aligned(row: list[str], widths: list[int]) -> list[str]:
    """The first column to the left, numbers to the right."""
    cells = zip(row[1:], widths[1:], strict=True)
    return [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in cells)]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


async def print_report(suite: Suite, first: date, last: date, members: dict[str, int]) -> None:
    funnel = await suite.metrics.GetStageFunnel(
        metrics_pb2.GetStageFunnelRequest(start_date=first.isoformat(), end_date=last.isoformat())
    )
    print(f"\nStage funnel, {first} to {last}")
    print(
        table(
            ("stage", "entered", "from the stage before"),
            [
                (
                    stage_name(s.lifecycle_stage) or "",
                    int(s.entered),
                    s.conversion_rate if position else "",
                )
                for position, s in enumerate(funnel.stages)
            ],
        )
    )
    snapshot = await suite.metrics.GetStageSnapshot(metrics_pb2.GetStageSnapshotRequest())
    print("\nUsers per stage now")
    print(
        table(
            ("stage", "users"),
            [(stage_name(s.lifecycle_stage) or "", int(s.users)) for s in snapshot.stages],
        )
    )
    print("\nSegments")
    print(table(("segment", "members"), sorted(members.items())))
    daily = await _series(suite, first, last, COLUMNS + TOTALS)
    print(f"\nDaily metrics (all stages), {first} to {last}")
    rows = [(day, *(int(daily[day].get(c[0], 0)) for c in COLUMNS)) for day in sorted(daily)]
    print(table(("day", *(c[0] for c in COLUMNS)), rows))
    print()
    for heading, _, _ in TOTALS:
        print(f"{heading}: {int(sum(values.get(heading, 0) for values in daily.values())):,}")


async def _series(
    suite: Suite, first: date, last: date, columns: Sequence[tuple[str, str, dict[str, str]]]
) -> dict[str, dict[str, float]]:
    """Each day's value of each column, by heading."""
    reply = await suite.metrics.GetMetrics(
        metrics_pb2.GetMetricsRequest(
            metric_names=sorted({metric for _, metric, _ in columns}),
            lifecycle_stages=[stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED],
            start_date=first.isoformat(),
            end_date=last.isoformat(),
        )
    )
    by_day: dict[str, dict[str, float]] = defaultdict(dict)
    for series in reply.series:
        dimensions = struct_to_dict(series.dimensions)
        for heading, metric, wanted in columns:
            if series.metric_name == metric and dimensions == wanted:
                for point in series.points:
                    by_day[point.metric_date][heading] = point.value
    return by_day
