"""The event analytics' definitions (docs/metrics.md) computed the slow and
obvious way, event by event in Python, for the property tests to hold the
SQL to; and loading generated events through RecordEvents."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from conditions import Context, Evaluator, Scope, parse_condition
from lifecycle.metrics.v1 import metrics_pb2
from services.metrics.analytics import Period
from tests.metrics.conftest import MetricsServer, event

STAGES = ("Acquisition", "Activation", "Retention")


@dataclass(frozen=True)
class Event:
    user: uuid.UUID
    event_type: str
    at: datetime
    stage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    event_type: str
    condition: dict[str, Any] | None = None

    def message(self) -> metrics_pb2.EventMatch:
        message = metrics_pb2.EventMatch(event_type=self.event_type)
        if self.condition:
            message.condition.update(self.condition)
        return message

    def holds(self, e: Event) -> bool:
        if self.event_type.endswith(".*"):
            if not e.event_type.startswith(self.event_type[:-1]):
                return False
        elif e.event_type != self.event_type:
            return False
        if not self.condition:
            return True
        condition = parse_condition(self.condition, "c", Scope(events=True))
        return Evaluator(condition).matches(Context(as_of=e.at, event_data=e.data))


async def load(server: MetricsServer, events: list[Event]) -> None:
    """A log holding these events only."""
    await server.pool.execute("TRUNCATE lifecycle_events")
    messages = [
        event(e.event_type, e.at, user_id=e.user, stage=e.stage, data=e.data) for e in events
    ]
    for first in range(0, len(messages), 1000):
        batch = metrics_pb2.RecordEventsRequest(events=messages[first : first + 1000])
        await server.stub.RecordEvents(batch)


def _by_user(events: list[Event]) -> dict[uuid.UUID, list[Event]]:
    users: dict[uuid.UUID, list[Event]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.at):
        users[e.user].append(e)
    return users


def _ordered(
    mine: list[Event], anchor: Event, steps: list[Match], window: timedelta
) -> list[datetime]:
    chain = [anchor.at]
    for step in steps[1:]:
        later = [e.at for e in mine if e.at > chain[-1] and step.holds(e)]
        if not later or min(later) > anchor.at + window:
            break
        chain.append(min(later))
    return chain


def _any(mine: list[Event], anchor: Event, steps: list[Match], window: timedelta) -> list[datetime]:
    firsts = [
        min((e.at for e in mine if e.at >= anchor.at and s.holds(e)), default=None) for s in steps
    ]
    return sorted(t for t in firsts if t is not None and t <= anchor.at + window)


def _strict(
    mine: list[Event], anchor: Event, steps: list[Match], window: timedelta
) -> list[datetime]:
    position = mine.index(anchor)
    chain = [anchor.at]
    for offset, step in enumerate(steps[1:], 1):
        if position + offset >= len(mine):
            break
        e = mine[position + offset]
        if not (_alone(mine, e) and step.holds(e) and e.at <= anchor.at + window):
            break
        chain.append(e.at)
    return chain


def _alone(mine: list[Event], e: Event) -> bool:
    return sum(1 for other in mine if other.at == e.at) == 1


def _starts(
    mine: list[Event], steps: list[Match], order: str, start: datetime, end: datetime
) -> list[Event]:
    def may_start(e: Event) -> bool:
        if order == "any":
            return any(s.holds(e) for s in steps)
        return steps[0].holds(e) and (order != "strict" or _alone(mine, e))

    return [e for e in mine if start <= e.at < end and may_start(e)]


_CHAINS = {"ordered": _ordered, "any": _any, "strict": _strict}


def funnel_model(
    events: list[Event],
    steps: list[Match],
    window: timedelta,
    first: date,
    last: date,
    order: str,
    breakdown: str | None,
) -> dict[str | None, list[tuple[int, int | None]]]:
    """Per group (None: everybody), per step: (people, median gap in microseconds)."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = start + timedelta(days=(last - first).days + 1)
    reached: dict[str | None, list[list[datetime]]] = defaultdict(list)
    for everything in _by_user(events).values():
        mine = [e for e in everything if start <= e.at < end + window]
        attempts = [
            (_CHAINS[order](mine, anchor, steps, window), anchor)
            for anchor in _starts(mine, steps, order, start, end)
        ]
        if not attempts:
            continue
        chain, anchor = max(attempts, key=lambda a: (len(a[0]), -a[1].at.timestamp()))
        reached[None].append(chain)
        if breakdown == "stage":
            reached[anchor.stage or ""].append(chain)
        elif breakdown is not None:
            value = anchor.data.get(breakdown)
            reached["" if value is None else _text(value)].append(chain)
    return {group: _counts(chains, len(steps)) for group, chains in reached.items()} | (
        {} if None in reached else {None: [(0, None)] * len(steps)}
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _counts(chains: list[list[datetime]], size: int) -> list[tuple[int, int | None]]:
    counts = []
    for j in range(size):
        got = [c for c in chains if len(c) > j]
        gaps = sorted(_micros(c[j] - c[j - 1]) for c in got) if j else []
        counts.append((len(got), _median(gaps)))
    return counts


def _micros(gap: timedelta) -> int:
    return gap // timedelta(microseconds=1)


def _median(values: list[int]) -> int | None:
    if not values:
        return None
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) // 2


def retention_model(
    events: list[Event],
    cohort: Match,
    returning: Match,
    period: Period,
    periods: int,
    first: date,
    last: date,
    today: date,
) -> list[tuple[date, int, list[tuple[int, date, int]]]]:
    """Per cohort, oldest first: (first day, size, [(period, first day, returned)])."""
    members: dict[date, dict[uuid.UUID, datetime]] = defaultdict(dict)
    for user, mine in _by_user(events).items():
        times = [e.at for e in mine if first <= e.at.date() <= last and cohort.holds(e)]
        if times:
            members[period.start_of(times[0].date())][user] = times[0]
    mine_of = _by_user(events)
    cohorts = []
    for start, users in sorted(members.items()):
        returned = [0] * (periods + 1)
        for user, joined in users.items():
            seen = {
                _index(period, start, period.start_of(e.at.date()))
                for e in mine_of[user]
                if e.at > joined and returning.holds(e)
            }
            for n in seen:
                if n <= periods:
                    returned[n] += 1
        values = [(n, period.after(start, n), count) for n, count in enumerate(returned)]
        cohorts.append((start, len(users), [v for v in values if v[1] <= today]))
    return cohorts


def _index(period: Period, start: date, later: date) -> int:
    n = 0
    while period.after(start, n + 1) <= later:
        n += 1
    return n
