"""Hypothesis strategies for what people did: event histories and event
leaves (docs/conditions.md, "What people did"). Types, moments and data draw
from small pools shared with the leaves (several events at one moment
included), so that counts meet their thresholds and windows their edges."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from conditions.model import COUNT_OPERATORS, OPERATORS, Kind
from tests.segments.engines import StoredUser
from tests.segments.strategies import (
    DURATIONS,
    LEAVES,
    MOMENTS,
    TIMED_USERS,
    TIMESTAMPS,
    USERS,
    attribute_leaves,
    documents,
)

EVENT_TYPES = ["purchase", "purchase.refund", "login", "billing.paid", "billing"]
LEAF_TYPES = [*EVENT_TYPES, "purchase.*", "billing.*"]
_WINDOW_DURATIONS = st.one_of(DURATIONS, st.sampled_from(["P30D", "P7D", "P2D"]))

EVENTS = st.tuples(st.sampled_from(EVENT_TYPES), MOMENTS, documents())


Event = tuple[str, datetime, dict[str, Any]]


def _with_events(user: StoredUser, events: list[Event]) -> StoredUser:
    return StoredUser(user.attributes, user.stage, user.created_at, user.history, tuple(events))


# Half of them with timestamps at "t" and "n", which anchored windows read.
PEOPLE = st.builds(_with_events, st.one_of(USERS, TIMED_USERS), st.lists(EVENTS, max_size=8))

# Leaves over an event's data: any attribute operator but the windows, which
# belong to the event leaf.
DATA_LEAVES = attribute_leaves().filter(
    lambda leaf: OPERATORS[leaf["op"]].kind is not Kind.DURATION
)
WINDOWS = st.one_of(
    st.none(),
    _WINDOW_DURATIONS.map(lambda duration: {"last": duration}),
    TIMESTAMPS.map(lambda moment: {"since": moment}),
    st.tuples(MOMENTS, MOMENTS).map(
        lambda pair: {"between": [moment.isoformat() for moment in sorted(pair)]}
    ),
    # Anchored: the span after or before the person's own moment (a timestamp
    # attribute, one that is missing or no timestamp, or their creation time).
    st.builds(
        lambda span, side, anchor: {"within": span, side: anchor},
        _WINDOW_DURATIONS,
        st.sampled_from(["after", "before"]),
        st.sampled_from([{"attr": "t"}, {"attr": "n"}, {"attr": "o.a"}, "created_at"]),
    ),
)


@st.composite
def event_leaves(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": draw(st.sampled_from(LEAF_TYPES))}
    if draw(st.integers(0, 2)) == 0:
        spec["where"] = draw(DATA_LEAVES)
    measure = draw(st.sampled_from(["count", "count", "first", "last"]))
    if measure == "count":
        window = draw(WINDOWS)
        if window is not None:
            spec["window"] = window
        op = draw(st.sampled_from(COUNT_OPERATORS))
        spec["count"] = {"op": op, "value": draw(st.integers(0, 4))}
    elif draw(st.booleans()):
        op = draw(st.sampled_from(["before", "after"]))
        spec[measure] = {"op": op, "value": draw(TIMESTAMPS)}
    else:
        op = draw(st.sampled_from(["within_last", "not_within_last"]))
        spec[measure] = {"op": op, "value": draw(_WINDOW_DURATIONS)}
    return {"event": spec}


# Mostly event leaves, among the other leaves, under all, any and not.
BEHAVIOUR_CONDITIONS = st.recursive(
    st.integers(0, 3).flatmap(lambda pick: LEAVES if pick == 0 else event_leaves()),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"all": items}),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"any": items}),
        inner.map(lambda item: {"not": item}),
    ),
    max_leaves=4,
).map(lambda node: {"v": 1, **node})
