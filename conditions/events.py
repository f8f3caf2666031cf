"""Event leaves in Python: what a person's tracked events say (docs/conditions.md,
"What people did"). conditions.sql says the same in PostgreSQL over the users
service's `user_events`; the property test in tests/segments checks it.

An event counts once it has happened (`occurred_at <= as_of`) and while it is
in the leaf's window. The users service records no event later than it
receives it, so time alone only ages events out of a `last` window: a count's
answer flips when the event whose exit crosses its threshold leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conditions.model import EventAnchor, EventLeaf, EventWindow
from conditions.values import MICROSECOND, MISSING, later, lookup, parse_timestamp


@dataclass(frozen=True)
class PersonEvent:
    """One tracked event of a person, as the users service keeps it."""

    event_type: str
    occurred_at: datetime
    data: Mapping[str, Any]


# Whether an event's data satisfy an event leaf's `where`, at `as_of`.
DataTest = Callable[[Mapping[str, Any], datetime], bool]
_COUNTS: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda count, n: count == n,
    "neq": lambda count, n: count != n,
    "gt": lambda count, n: count > n,
    "gte": lambda count, n: count >= n,
    "lt": lambda count, n: count < n,
    "lte": lambda count, n: count <= n,
}


def anchor_moment(
    anchor: EventAnchor | None, attributes: Mapping[str, Any], created_at: datetime
) -> datetime | None:
    """The person's moment an anchored window is measured from; None without
    an anchor, or when the attribute is missing or not a timestamp (the window
    then holds nothing)."""
    if anchor is None:
        return None
    if not anchor.keys:
        return created_at
    return parse_timestamp(lookup(attributes, anchor.keys))


def bounds(
    window: EventWindow, as_of: datetime, anchor_at: datetime | None
) -> tuple[datetime | None, datetime | None] | None:
    """The window's first and last moments (None: open on that side), or None
    when it holds nothing (an anchored window without its moment)."""
    anchor = window.anchor
    if anchor is None:
        return (as_of - window.last if window.last is not None else window.since), window.until
    if anchor_at is None:
        return None
    if anchor.before:
        return anchor_at - anchor.span, anchor_at
    # Past the year 9999 it is open: every event kept is before then.
    return anchor_at, later(anchor_at, anchor.span)


def moments(
    node: EventLeaf,
    events: tuple[PersonEvent, ...],
    as_of: datetime,
    where: DataTest | None,
    anchor_at: datetime | None = None,
) -> list[datetime]:
    """When each event the leaf reads happened, newest first (`anchor_at`: the
    moment of an anchored window)."""
    window = bounds(node.window, as_of, anchor_at)
    if window is None:
        return []
    since, until = window
    found = [
        event.occurred_at
        for event in events
        if node.matches_type(event.event_type)
        and event.occurred_at <= as_of
        and (since is None or event.occurred_at >= since)
        and (until is None or event.occurred_at <= until)
        and (where is None or where(event.data, as_of))
    ]
    found.sort(reverse=True)
    return found


def measured(node: EventLeaf, newest_first: list[datetime]) -> Any:
    """The count, or the first or last moment (MISSING without events)."""
    if node.measure == "count":
        return len(newest_first)
    if not newest_first:
        return MISSING
    return newest_first[-1] if node.measure == "first" else newest_first[0]


def count_holds(node: EventLeaf, count: int) -> bool:
    return _COUNTS[node.op.name](count, node.value)


def threshold(node: EventLeaf, count: int) -> int:
    """How many events must still be in the window for the answer to stay what it
    is at `count`: the answer flips when the threshold-th newest leaves. (gte n
    and lt n flip between n and n - 1; gt and lte between n + 1 and n; eq and
    neq between n and n - 1 while the count is n, n + 1 and n while above.)"""
    n: int = node.value
    name = node.op.name
    if name in ("gt", "lte") or (name in ("eq", "neq") and count > n):
        return n + 1
    return n


def count_flip(node: EventLeaf, newest_first: list[datetime]) -> datetime | None:
    """When the event whose exit changes the answer leaves a `last` window."""
    window = node.window.last
    rank = threshold(node, len(newest_first))
    if window is None or not 1 <= rank <= len(newest_first):
        return None
    return later(newest_first[rank - 1], window + MICROSECOND)


@dataclass(frozen=True)
class EventReads:
    """Which of a person's events some conditions read at `as_of`: of `types`
    (exact, or a family ending in "*"), since `since` (all kept when None)."""

    types: tuple[str, ...] = ()
    since: datetime | None = None


def event_reads(leaves: Iterable[EventLeaf], as_of: datetime) -> EventReads:
    """What a profile must carry for these leaves: each one's types, from the
    earliest moment a window of them opens (first and last, and anchored windows,
    whose start is each person's own, read every event)."""
    types: set[str] = set()
    starts: list[datetime | None] = []
    for leaf in leaves:
        types.add(leaf.event_type + ("*" if leaf.prefix else ""))
        window = leaf.window
        starts.append(as_of - window.last if window.last is not None else window.since)
    if not types:
        return EventReads()
    since = None if None in starts else min(start for start in starts if start is not None)
    return EventReads(tuple(sorted(types)), since)
