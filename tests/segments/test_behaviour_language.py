"""Event leaves as a language (docs/conditions.md, "What people did"): where
they may be used, what a condition says it reads of people's events, and the
JSON Schema beside the validator. Their meaning is checked in both engines by
the property test and through the services by test_behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from conditions import (
    SEGMENT,
    TRIGGER,
    Context,
    Evaluator,
    EventReads,
    UserProfile,
    event_reads,
    parse_condition,
)
from conditions.events import PersonEvent
from conditions.schema import SCHEMA
from runtime.errors import InvalidArgument

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
LEAVES: list[dict[str, Any]] = [
    {"type": "purchase", "window": {"last": "P30D"}, "count": {"op": "gte", "value": 3}},
    {"type": "billing.*", "window": {"since": "2025-05-01"}, "count": {"op": "eq", "value": 0}},
    {"type": "login", "last": {"op": "within_last", "value": "P7D"}},
    {
        "type": "purchase",
        "where": {"any": [
            {"attr": "amount", "op": "gt", "value": 10},
            {"not": {"attr": "x", "op": "exists"}},
        ]},
        "window": {"between": ["2025-01-01", "2025-02-01T00:00:00Z"]},
        "count": {"op": "lt", "value": 2},
    },
]  # fmt: skip


def condition(*leaves: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "all": [{"event": leaf} for leaf in leaves]}


def test_a_condition_says_which_events_it_reads_and_from_when() -> None:
    windows = parse_condition(condition(LEAVES[0], LEAVES[1]), "c", SEGMENT)
    assert windows.dependencies().event_types == {"purchase", "billing.*"}
    assert windows.dependencies().reads_event("billing.paid")
    assert not windows.dependencies().reads_event("billing")
    # From the earlier start: the billing window's (May 1), before the 30 days'.
    assert event_reads(windows.event_leaves(), AS_OF) == EventReads(
        ("billing.*", "purchase"), AS_OF - timedelta(days=31)
    )
    # The last login reads every login kept.
    everything = parse_condition(condition(*LEAVES), "c", SEGMENT)
    assert event_reads(everything.event_leaves(), AS_OF).since is None


def test_triggers_read_event_leaves_as_segments_do() -> None:
    trigger = parse_condition(condition(*LEAVES), "c", TRIGGER)
    segment = parse_condition(condition(*LEAVES), "c", SEGMENT)
    assert trigger.event_leaves() == segment.event_leaves()


def test_the_schema_accepts_what_the_validator_accepts_and_refuses_the_shapes_it_refuses() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert list(validator.iter_errors(condition(*LEAVES))) == []
    once = {"count": {"op": "gte", "value": 1}}
    for bad in (
        {"type": "purchase"},
        {"type": "purchase", **once, "last": {"op": "after", "value": "2025-01-01"}},
        {"type": "purchase", "count": {"op": "gte", "value": 1.5}},
        {"type": "purchase", "where": {"attr": "a", "src": "user", "op": "exists"}, **once},
    ):
        assert list(validator.iter_errors(condition(bad))), bad
        with pytest.raises(InvalidArgument):
            parse_condition(condition(bad), "c", SEGMENT)


def anchored(window: Any) -> dict[str, Any]:
    return {"type": "purchase", "window": window, "count": {"op": "gte", "value": 1}}


def test_an_anchored_window_reads_every_event_kept_and_depends_on_its_attribute() -> None:
    parsed = parse_condition(
        condition(
            anchored({"within": "P14D", "after": {"attr": "signup.at"}}),
            anchored({"within": "PT12H", "before": "created_at"}),
            LEAVES[0],
        ),
        "c",
        SEGMENT,
    )
    # Each person's window starts at their own moment: no common start.
    assert event_reads(parsed.event_leaves(), AS_OF).since is None
    # A change of the attribute moves the window: it re-evaluates the person.
    assert parsed.dependencies().attribute_keys == {"signup"}


def test_anchored_windows_are_checked_and_each_problem_named() -> None:
    windows = [
        {"within": "P1M", "after": {"attr": "signup_at"}},
        {"within": "P401D", "after": {"attr": "signup_at"}},
        {"within": "P14D", "after": {"attr": "9lives"}},
        {"within": "P14D", "after": "updated_at"},
        {"within": "P14D", "after": {"attr": "a"}, "before": {"attr": "b"}},
        {"within": "P14D", "around": {"attr": "signup_at"}},
        {"within": "P14D"},
    ]
    with pytest.raises(InvalidArgument) as refused:
        parse_condition(condition(*map(anchored, windows)), "c", SEGMENT)
    assert [v.field for v in refused.value.violations] == [
        "c.all[0].event.window.within",
        "c.all[1].event.window.within",
        "c.all[2].event.window.after.attr",
        "c.all[3].event.window.after",
        "c.all[4].event.window",
        "c.all[5].event.window",
        "c.all[6].event.window",
    ]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    # All but the too long one: a schema does not compare durations.
    for window in windows[:1] + windows[2:]:
        assert list(validator.iter_errors(condition(anchored(window)))), window
    good = {"within": "P14D", "before": {"attr": "renews_at"}}
    assert list(validator.iter_errors(condition(anchored(good)))) == []


def _person(signup_at: Any, *purchases: datetime) -> Context:
    profile = UserProfile(
        {"signup_at": signup_at},
        "Activation",
        AS_OF - timedelta(days=60),
        None,
        tuple(PersonEvent("purchase", moment, {}) for moment in purchases),
    )
    return Context(AS_OF, profile)


def test_an_anchored_window_counts_between_its_ends_and_time_alone_never_changes_it() -> None:
    signup = AS_OF - timedelta(days=20)
    stamp = signup.isoformat()
    evaluator = Evaluator(
        parse_condition(
            condition(anchored({"within": "P14D", "after": {"attr": "signup_at"}})), "c", SEGMENT
        )
    )
    # Both ends are in the window; a microsecond past the end is not.
    for purchases, member in [
        ((signup,), True),
        ((signup + timedelta(days=14),), True),
        ((signup + timedelta(days=14, microseconds=1),), False),
        ((signup - timedelta(microseconds=1),), False),
    ]:
        context = _person(stamp, *purchases)
        assert evaluator.matches(context) is member, purchases
        assert evaluator.valid_until(context) is None
        assert evaluator.explain(context)[0].actual == int(member)
    # Without the moment (missing, or not a timestamp) the window holds nothing.
    for no_moment in (None, "2025-02-30", 17):
        assert evaluator.explain(_person(no_moment, signup))[0].actual == 0
