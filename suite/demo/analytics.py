"""What the demo prints of the event analytics: a funnel of the tracked
events and weekly retention of signups, read with GetEventFunnel and
GetRetention as any client would (docs/metrics.md, "Event analytics")."""

from __future__ import annotations

from datetime import date, timedelta

from lifecycle.metrics.v1 import metrics_pb2
from suite.demo.clients import Suite
from suite.demo.report import table

FUNNEL = ("tracked.signup", "tracked.login", "tracked.purchase", "tracked.invite")
WINDOW = timedelta(days=14)
WEEKS = 3


async def print_analytics(suite: Suite, first: date, last: date) -> None:
    request = metrics_pb2.GetEventFunnelRequest(
        steps=[metrics_pb2.EventMatch(event_type=kind) for kind in FUNNEL],
        start_date=first.isoformat(),
        end_date=last.isoformat(),
    )
    request.conversion_window.FromTimedelta(WINDOW)
    funnel = await suite.metrics.GetEventFunnel(request)
    print(f"\nEvent funnel within {WINDOW.days} days of signing up, {first} to {last}")
    rows = [
        (
            kind,
            int(step.people),
            step.conversion_from_previous if position else "",
            _hours(step) if position else "",
        )
        for position, (kind, step) in enumerate(zip(FUNNEL, funnel.steps, strict=True))
    ]
    print(table(("step", "people", "from the step before", "median time"), rows))
    retention = await suite.metrics.GetRetention(
        metrics_pb2.GetRetentionRequest(
            cohort_event=metrics_pb2.EventMatch(event_type="tracked.signup"),
            return_event=metrics_pb2.EventMatch(event_type="tracked.login"),
            period=metrics_pb2.RETENTION_PERIOD_WEEK,
            periods=WEEKS,
            start_date=first.isoformat(),
            end_date=last.isoformat(),
        )
    )
    print("\nWeekly retention of signups (logged in during week n)")
    headings = ("cohort", "signups", *(f"week {n}" for n in range(WEEKS + 1)))
    cohorts = [
        (f"week of {c.period_start}", int(c.size), *(v.share for v in c.values))
        + ("",) * (WEEKS + 1 - len(c.values))
        for c in retention.cohorts
    ]
    print(table(headings, cohorts))


def _hours(step: metrics_pb2.EventFunnelStep) -> str:
    if not step.HasField("median_time_from_previous"):
        return ""
    return f"{step.median_time_from_previous.ToTimedelta() / timedelta(hours=1):.1f} h"
