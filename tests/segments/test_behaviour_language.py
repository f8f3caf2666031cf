"""Event leaves as a language (docs/conditions.md, "What people did"): where
they may be used, what a condition says it reads of people's events, and the
JSON Schema beside the validator. Their meaning is checked in both engines by
the property test and through the services by test_behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from conditions import SEGMENT, TRIGGER, EventReads, event_reads, parse_condition
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


def test_triggers_refuse_event_leaves_for_now() -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_condition(condition(LEAVES[0]), "trigger.conditions", TRIGGER)
    assert [v.field for v in refused.value.violations] == ["trigger.conditions.all[0].event"]


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
