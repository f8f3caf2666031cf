"""The condition language written as sentences: every node and operator of
docs/conditions.md, as the console's segment page shows them."""

from __future__ import annotations

from typing import Any

import pytest

from console.conditions_text import Link, Phrase, describe, duration, scalar, segment_ids
from console.web import TEMPLATES


def _attr(op: str, value: Any = None, **more: Any) -> dict[str, Any]:
    node = {"attr": "plan", "op": op, **more}
    return node if value is None else {**node, "value": value}


ATTRIBUTE_LEAVES: list[tuple[dict[str, Any], str]] = [
    (_attr("eq", "pro"), "plan is pro"),
    (_attr("eq", 3.0), "plan is 3"),
    (_attr("eq", 2.5), "plan is 2.5"),
    (_attr("eq", True), "plan is true"),
    (_attr("eq", ""), 'plan is ""'),
    (_attr("neq", "pro"), "plan is not pro"),
    (_attr("in", ["pro", "team"]), "plan is one of pro, team"),
    (_attr("not_in", ["pro", "team"]), "plan is not one of pro, team"),
    (_attr("exists"), "plan is set"),
    (_attr("not_exists"), "plan is not set"),
    (_attr("gt", 30), "plan > 30"),
    (_attr("gte", 8), "plan ≥ 8"),
    (_attr("lt", 30), "plan < 30"),
    (_attr("lte", 30), "plan ≤ 30"),
    (_attr("between", [18, 30]), "plan is between 18 and 30"),
    (_attr("not_between", [18, 30]), "plan is not between 18 and 30"),
    (_attr("contains", "@acme."), "plan contains @acme."),
    (_attr("contains", "@Acme.", ci=True), "plan contains @Acme. (ignoring case)"),
    (_attr("not_contains", "@acme."), "plan does not contain @acme."),
    (_attr("starts_with", "Dr "), "plan starts with Dr "),
    (_attr("ends_with", "@example.com"), "plan ends with @example.com"),
    (_attr("regex", "^[A-Z]+$"), "plan matches the pattern ^[A-Z]+$"),
    (_attr("not_regex", "^a"), "plan does not match the pattern ^a"),
    (_attr("has", "beta"), "plan has beta"),
    (_attr("has_any", ["beta", "vip"]), "plan has any of beta, vip"),
    (_attr("has_all", ["beta", "vip"]), "plan has all of beta, vip"),
    (_attr("has_none", ["beta", "vip"]), "plan has none of beta, vip"),
    (_attr("before", "2025-06-01"), "plan is before 2025-06-01"),
    (_attr("after", "2025-06-01T00:00:00Z"), "plan is after 2025-06-01T00:00:00Z"),
    (_attr("within_last", "P14D"), "plan is within the last 14 days"),
    (_attr("not_within_last", "P1D"), "plan is not within the last 1 day"),
    (_attr("changed"), "plan changed"),
    (_attr("changed_to", "pro"), "plan changed to pro"),
    (_attr("changed_from", "free"), "plan changed from free"),
    ({"attr": "amount", "src": "event", "op": "gt", "value": 0}, "the event's amount > 0"),
    ({"attr": "address.country", "op": "eq", "value": "DE"}, "address.country is DE"),
]

OTHER_LEAVES: list[tuple[dict[str, Any], str]] = [
    ({"stage": {"op": "eq", "value": "Activation"}}, "stage is Activation"),
    ({"stage": {"op": "neq", "value": "Activation"}}, "stage is not Activation"),
    (
        {"stage": {"op": "in", "value": ["Revenue", "Referral"]}},
        "stage is one of Revenue, Referral",
    ),
    ({"stage": {"op": "not_in", "value": ["Revenue"]}}, "stage is not one of Revenue"),
    ({"stage_age": {"op": "gt", "value": "P7D"}}, "time in stage > 7 days"),
    ({"stage_age": {"op": "gte", "value": "PT12H"}}, "time in stage ≥ 12 hours"),
    ({"stage_age": {"op": "lt", "value": "P2W"}}, "time in stage < 2 weeks"),
    (
        {"stage_age": {"op": "lte", "value": "P1DT2H30M"}},
        "time in stage ≤ 1 day 2 hours 30 minutes",
    ),
    ({"created_at": {"op": "before", "value": "2025-01-01"}}, "creation time is before 2025-01-01"),
    ({"created_at": {"op": "after", "value": "2025-01-01"}}, "creation time is after 2025-01-01"),
    (
        {"created_at": {"op": "within_last", "value": "P7D"}},
        "creation time is within the last 7 days",
    ),
    (
        {"created_at": {"op": "not_within_last", "value": "PT90.5S"}},
        "creation time is not within the last 90.5 seconds",
    ),
    ({"event_type": {"op": "eq", "value": "billing.paid"}}, "the event's type is billing.paid"),
    (
        {"event_type": {"op": "starts_with", "value": "billing."}},
        "the event's type starts with billing.",
    ),
]


def _count(op: str, n: int, **more: Any) -> dict[str, Any]:
    return {"event": {"type": "purchase", "count": {"op": op, "value": n}, **more}}


EVENT_LEAVES: list[tuple[dict[str, Any], str]] = [
    (_count("gte", 3, window={"last": "P30D"}), "at least 3 purchase events in the last 30 days"),
    (_count("gt", 1), "more than 1 purchase event"),
    (_count("eq", 2), "exactly 2 purchase events"),
    (_count("neq", 2), "not exactly 2 purchase events"),
    (
        _count("lt", 5, window={"since": "2025-01-01"}),
        "fewer than 5 purchase events since 2025-01-01",
    ),
    (
        _count("lte", 5, window={"between": ["2025-01-01", "2025-02-01T00:00:00Z"]}),
        "at most 5 purchase events between 2025-01-01 and 2025-02-01T00:00:00Z",
    ),
    (
        _count("gte", 1, window={"within": "P14D", "after": {"attr": "signup_at"}}),
        "at least 1 purchase event within 14 days after their signup_at",
    ),
    (
        _count("eq", 0, window={"within": "P7D", "before": "created_at"}),
        "no purchase events within 7 days before they were created",
    ),
    (_count("eq", 0), "no purchase events"),
    (
        _count("gte", 1, where={"attr": "amount", "op": "gte", "value": 100}),
        "at least 1 purchase event where amount ≥ 100",
    ),
    (
        {"event": {"type": "login", "last": {"op": "within_last", "value": "P7D"}}},
        "the last login event was within the last 7 days",
    ),
    (
        {"event": {"type": "login", "last": {"op": "not_within_last", "value": "P7D"}}},
        "the last login event was not within the last 7 days",
    ),
    (
        {"event": {"type": "billing.*", "first": {"op": "after", "value": "2025-01-01"}}},
        "the first billing.* event was after 2025-01-01",
    ),
    (
        {"event": {"type": "billing.*", "first": {"op": "before", "value": "2025-01-01"}}},
        "the first billing.* event was before 2025-01-01",
    ),
]


@pytest.mark.parametrize(("node", "text"), ATTRIBUTE_LEAVES + OTHER_LEAVES + EVENT_LEAVES)
def test_each_leaf_is_one_sentence(node: dict[str, Any], text: str) -> None:
    assert describe(node) == Phrase(text)


def test_all_any_and_not_introduce_their_children() -> None:
    condition = {
        "v": 1,
        "all": [
            {"attr": "plan", "op": "in", "value": ["pro", "team"]},
            {"not": {"attr": "email", "op": "ends_with", "value": "@example.com", "ci": True}},
            {"any": [{"stage": {"op": "eq", "value": "Activation"}}, {"in_segment": "s1"}]},
        ],
    }
    assert describe(condition) == Phrase(
        "all of:",
        [
            Phrase("plan is one of pro, team"),
            Phrase("not:", [Phrase("email ends with @example.com (ignoring case)")]),
            Phrase("any of:", [Phrase("stage is Activation"), _in_segment("s1", "s1")]),
        ],
    )


def _in_segment(segment_id: str, label: str) -> Phrase:
    return Phrase("is in segment ", link=Link(f"/segments/{segment_id}", label))


def test_an_in_segment_leaf_names_its_segment_and_links_it() -> None:
    names = {"s1": "power users", "s2": "at risk"}
    condition = {"any": [{"in_segment": "s1"}, {"not": {"in_segment": "s3"}}]}
    assert describe(condition, names) == Phrase(
        "any of:", [_in_segment("s1", "power users"), Phrase("not:", [_in_segment("s3", "s3")])]
    )
    nested = {"event": {"type": "t", "count": {"op": "gte", "value": 1}, "where": condition}}
    assert segment_ids({"all": [nested, {"in_segment": "s2"}, {"attr": "in_segment"}]}) == {
        "s1",
        "s2",
        "s3",
    }
    assert segment_ids({"attr": "plan", "op": "exists"}) == set()


def test_empty_groups_say_what_they_always_answer() -> None:
    assert describe({"v": 1, "all": []}) == Phrase("always holds")
    assert describe({"any": []}) == Phrase("never holds")


def test_a_where_of_several_leaves_is_listed_under_the_event_leaf() -> None:
    where = {
        "any": [{"attr": "amount", "op": "gte", "value": 100}, {"attr": "vip", "op": "exists"}]
    }
    node = {
        "event": {
            "type": "purchase",
            "last": {"op": "after", "value": "2025-01-01"},
            "where": where,
        }
    }
    assert describe(node) == Phrase(
        "the last purchase event was after 2025-01-01, considering only events where:",
        [Phrase("any of:", [Phrase("amount ≥ 100"), Phrase("vip is set")])],
    )


def test_a_node_the_console_does_not_know_is_shown_as_json() -> None:
    assert describe({"v": 1, "future": {"op": "eq"}}) == Phrase('{"future": {"op": "eq"}}')


def test_durations_and_values_read_as_words() -> None:
    assert duration("P1W") == "1 week"
    assert duration("PT1H1M1S") == "1 hour 1 minute 1 second"
    assert duration("P3M") == "P3M"  # not a duration of the language: as written
    assert duration("P") == "P"
    assert scalar(False) == "false"
    assert scalar(None) == "null"


def test_the_sentences_are_escaped_in_the_page() -> None:
    condition = {"all": [{"attr": "plan", "op": "eq", "value": "<script>alert(1)</script>"}]}
    html = TEMPLATES.env.from_string(
        '{% from "_condition.html" import sentence %}{{ sentence(phrase) }}'
    ).render(phrase=describe(condition))
    assert html == "all of:<ul><li>plan is &lt;script&gt;alert(1)&lt;/script&gt;</li></ul>"
    linked = TEMPLATES.env.from_string(
        '{% from "_condition.html" import sentence %}{{ sentence(phrase) }}'
    ).render(phrase=describe({"in_segment": "s1"}, {"s1": "<b>vip</b>"}))
    assert linked == 'is in segment <a href="/segments/s1">&lt;b&gt;vip&lt;/b&gt;</a>'
