"""The condition language without a database: what the validator refuses and
where it says the problem is, the regex subset, durations and timestamps, the
JSON Schema against the validator, references and their cycles, the Python
evaluator's time semantics, and the leaves only triggers may use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings

from conditions import (
    SEGMENT,
    SQL,
    TRIGGER,
    AttributeChanges,
    Context,
    Evaluator,
    ReferenceProblem,
    SegmentDefinition,
    UserProfile,
    compile_sql,
    parse_condition,
    resolve,
)
from conditions.model import AllOf, AnyOf, Condition, Not
from conditions.parse import Scope
from conditions.patterns import PatternError, check_pattern
from conditions.schema import SCHEMA
from conditions.values import parse_duration, parse_timestamp
from runtime.errors import InvalidArgument
from tests.segments.engines import StoredUser
from tests.segments.strategies import CONDITIONS, TIME_CONDITIONS, TIMED_USERS

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)


def violations(data: Any, scope: Scope = SEGMENT) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_condition(data, "segment.conditions", scope)
    return {v.field: v.description for v in caught.value.violations}


def leaf(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "all": [{"attr": "plan", "op": "eq", "value": "pro"}, fields]}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ("not an object", "segment.conditions", "must be an object"),
        ({"all": []}, "segment.conditions.v", "is required"),
        ({"v": 2, "all": []}, "segment.conditions.v", "must be 1"),
        ({"v": 1}, "segment.conditions", "exactly one of"),
        ({"v": 1, "all": [], "any": []}, "segment.conditions", "it has all, any"),
        ({"v": 1, "all": {}}, "segment.conditions.all", "list of nodes"),
        ({"v": 1, "all": [1]}, "segment.conditions.all[0]", "must be an object"),
        (leaf(attr="plan", op="like", value="x"), "segment.conditions.all[1].op", "one of eq"),
        (leaf(attr="plan", op="gt", value="10"), "segment.conditions.all[1].value", "number"),
        (leaf(attr="plan", op="eq", value=None), "segment.conditions.all[1].value", "exists"),
        (leaf(attr="plan", op="eq", value=[1]), "segment.conditions.all[1].value", "string"),
        (leaf(attr="plan", op="eq"), "segment.conditions.all[1].value", "is required"),
        (leaf(attr="plan", op="exists", value=1), "segment.conditions.all[1].value", "no value"),
        (leaf(attr="plan", op="in", value=[]), "segment.conditions.all[1].value", "1 to 1000"),
        (leaf(attr="plan", op="in", value=["a"] * 1001), "segment.conditions.all[1].value", "1000"),
        (
            leaf(attr="plan", op="in", value=["a", {}]),
            "segment.conditions.all[1].value[1]",
            "string",
        ),
        (leaf(attr="age", op="between", value=[5, 1]), "segment.conditions.all[1].value", "above"),
        (
            leaf(attr="age", op="between", value=[1]),
            "segment.conditions.all[1].value",
            "[low, high]",
        ),
        (
            leaf(attr="age", op="gt", value=float("nan")),
            "segment.conditions.all[1].value",
            "finite",
        ),
        (leaf(attr="x", op="contains", value=""), "segment.conditions.all[1].value", "non-empty"),
        (
            leaf(attr="x", op="contains", value="a" * 1025),
            "segment.conditions.all[1].value",
            "1024",
        ),
        (leaf(attr="x", op="eq", value="a\x00b"), "segment.conditions.all[1].value", "NUL"),
        (
            leaf(attr="x", op="eq", value="pro", ci=True),
            "segment.conditions.all[1].ci",
            "text and regex",
        ),
        (
            leaf(attr="x", op="contains", value="p", ci="yes"),
            "segment.conditions.all[1].ci",
            "boolean",
        ),
        (leaf(attr="x", op="regex", value="a" * 257), "segment.conditions.all[1].value", "256"),
        (leaf(attr="x", op="regex", value="\\d+"), "segment.conditions.all[1].value", "\\d"),
        (leaf(attr="x", op="regex", value="(a"), "segment.conditions.all[1].value", "unclosed"),
        (
            leaf(attr="x", op="before", value="2025-02-30"),
            "segment.conditions.all[1].value",
            "timestamp",
        ),
        (
            leaf(attr="x", op="within_last", value="P1M"),
            "segment.conditions.all[1].value",
            "months",
        ),
        (
            leaf(attr="x", op="within_last", value="P36501D"),
            "segment.conditions.all[1].value",
            "P36500D",
        ),
        (leaf(attr="1st", op="exists"), "segment.conditions.all[1].attr", "dotted path"),
        (leaf(attr="a..b", op="exists"), "segment.conditions.all[1].attr", "dotted path"),
        (leaf(attr="a.-1", op="exists"), "segment.conditions.all[1].attr", "dotted path"),
        (leaf(attr=".".join("k" * 9), op="exists"), "segment.conditions.all[1].attr", "at most 8"),
        (leaf(attr="x", op="exists", extra=1), "segment.conditions.all[1]", "unknown keys"),
        (leaf(attr="x", src="event", op="exists"), "segment.conditions.all[1].src", "triggers"),
        (leaf(attr="x", op="changed"), "segment.conditions.all[1].op", "triggers only"),
        (
            {"v": 1, "stage": {"op": "eq", "value": "activation"}},
            "segment.conditions.stage.value",
            "Activation",
        ),
        ({"v": 1, "stage": {"op": "gt", "value": "Revenue"}}, "segment.conditions.stage.op", "eq"),
        (
            {"v": 1, "stage_age": {"op": "gt", "value": "7 days"}},
            "segment.conditions.stage_age.value",
            "ISO-8601",
        ),
        (
            {"v": 1, "created_at": {"op": "before", "value": "yesterday"}},
            "segment.conditions.created_at.value",
            "timestamp",
        ),
        (
            {"v": 1, "created_at": {"op": "before", "value": "2025-01-01", "ci": True}},
            "segment.conditions.created_at",
            '{"op": ..., "value": ...}',
        ),
        (
            {"v": 1, "event_type": {"op": "eq", "value": "signup"}},
            "segment.conditions",
            "per event",
        ),
        ({"v": 1, "in_segment": "not-a-uuid"}, "segment.conditions.in_segment", "UUID"),
    ],
)
def test_bad_conditions_are_refused_at_their_path(data: Any, field: str, words: str) -> None:
    found = violations(data)
    assert field in found, found
    assert words in found[field]


def test_every_problem_is_reported_at_once() -> None:
    found = violations(
        {
            "v": 1,
            "any": [
                {"attr": "a", "op": "nope"},
                {"not": {"attr": "b", "op": "gt", "value": "x"}},
                {"stage": {"op": "in", "value": ["Nope"]}},
            ],
        }
    )
    assert set(found) == {
        "segment.conditions.any[0].op",
        "segment.conditions.any[1].not.value",
        "segment.conditions.any[2].stage.value",
    }


def test_limits_of_size_and_depth() -> None:
    deep: dict[str, Any] = {"attr": "a", "op": "exists"}
    for _ in range(10):
        deep = {"not": deep}
    assert "deeper than 10" in violations({"v": 1, **deep})["segment.conditions.not" + ".not" * 9]
    wide = {"v": 1, "all": [{"attr": "a", "op": "exists"}] * 100}
    assert "101 nodes" in violations(wide)["segment.conditions"]
    parse_condition({"v": 1, "all": [{"attr": "a", "op": "exists"}] * 99}, "c", SEGMENT)


def test_the_sql_scope_takes_inlined_conditions_but_no_references() -> None:
    big = {"v": 1, "all": [{"attr": "a", "op": "exists"}] * 500}
    parse_condition(big, "condition", SQL)
    reference = {"v": 1, "in_segment": str(uuid.uuid4())}
    assert "segments service" in violations(reference, SQL)["segment.conditions.in_segment"]


def test_the_trigger_scope_refuses_in_segment_at_its_path() -> None:
    nested = {
        "v": 1,
        "all": [{"attr": "plan", "op": "eq", "value": "pro"}, {"in_segment": str(uuid.uuid4())}],
    }
    found = violations(nested, TRIGGER)
    assert list(found) == ["segment.conditions.all[1].in_segment"]
    assert "trigger on segment.entered" in found["segment.conditions.all[1].in_segment"]


def test_the_sql_compiler_refuses_event_and_change_leaves_clearly() -> None:
    for data in (
        {"v": 1, "all": [{"event_type": {"op": "eq", "value": "signup"}}]},
        {"v": 1, "all": [{"attr": "amount", "src": "event", "op": "gt", "value": 0}]},
        {"v": 1, "all": [{"attr": "plan", "op": "changed"}]},
    ):
        condition = parse_condition(data, "condition", TRIGGER)
        with pytest.raises(InvalidArgument) as caught:
            compile_sql(condition, AS_OF)
        [violation] = caught.value.violations
        assert violation.field == "condition.all[0]"
        assert "per event" in violation.description


def test_the_compiled_sql_binds_every_value_and_path() -> None:
    hostile = "x'); DROP TABLE users; --"
    condition = parse_condition(
        {
            "v": 1,
            "all": [
                {"attr": "a", "op": "eq", "value": hostile},
                {"attr": "b", "op": "contains", "value": hostile},
                {"attr": "c", "op": "regex", "value": "x\\)"},
            ],
        },
        "c",
        SEGMENT,
    )
    compiled = compile_sql(condition, AS_OF)
    assert hostile not in compiled.where
    assert "DROP" not in compiled.where
    assert '{"a":"x\'); DROP TABLE users; --"}' in compiled.params
    assert ["a"] not in compiled.params  # eq is containment: the path is in the document


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("^[A-Z]{3}-[0-9]+$", True),
        ("(?:ab|cd)*x?", True),
        ("a{1,100}", True),
        ("\\.\\*\\[\\]", True),
        ("[\\]\\-\\\\]", True),
        ("a{101}", False),
        ("a{3,2}", False),
        ("((a{50}){50})", False),
        ("\\w", False),
        ("(?i)abc", False),
        ("(?=a)", False),
        ("a**", False),
        ("*a", False),
        ("^*", False),
        ("[]", False),
        ("[z-a]", False),
        ("[é-ü]", False),
        ("[[:alpha:]]", False),
        ("a|", False),
        ("()", False),
        ("a]", False),
        ("a}", False),
        ("\\1", False),
    ],
)
def test_the_regex_subset(pattern: str, ok: bool) -> None:
    if ok:
        check_pattern(pattern)
    else:
        with pytest.raises(PatternError):
            check_pattern(pattern)


def test_a_case_insensitive_regex_is_checked_once_folded() -> None:
    assert check_pattern("^ABC[A-Z]", ci=True) == "^abc[a-z]"
    with pytest.raises(PatternError):
        check_pattern("[Z-a]", ci=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P14D", timedelta(days=14)),
        ("P2W", timedelta(weeks=2)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("PT90.5S", timedelta(seconds=90, microseconds=500000)),
        ("PT0.000001S", timedelta(microseconds=1)),
        ("P", None),
        ("PT", None),
        ("P1DT", None),
        ("P1M", None),
        ("P1Y", None),
        ("P1W2D", None),
        ("-P1D", None),
        ("P1D\n", None),
        ("PT1.1234567S", None),
    ],
)
def test_durations(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01", datetime(2025, 6, 1, tzinfo=UTC)),
        ("2025-06-01T12:30:00Z", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
        ("2025-06-01T14:30:00.25+02:00", datetime(2025, 6, 1, 12, 30, 0, 250000, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2023-02-29", None),
        ("2025-06-01T12:30Z", None),
        ("2025-06-01 12:30:00Z", None),
        ("2025-06-01T12:30:00", None),
        ("2025-06-01T12:30:00.1234567Z", None),
        ("2025-06-01T24:00:00Z", None),
        ("2025-06-01T12:00:00+15:00", None),
        ("0999-01-01", None),
        ("2025-06-01\n", None),
        ("20250601", None),
    ],
)
def test_timestamps(text: str, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_the_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@settings(max_examples=200, deadline=None)
@given(CONDITIONS)
def test_the_json_schema_accepts_every_valid_condition(data: dict[str, Any]) -> None:
    parse_condition(data, "c", SEGMENT)
    SCHEMA_VALIDATOR.validate(data)


@pytest.mark.parametrize(
    "data",
    [
        {"all": []},
        {"v": 1},
        {"v": 1, "attr": "a", "op": "like", "value": "x"},
        {"v": 1, "attr": "1a", "op": "exists"},
        {"v": 1, "attr": "a", "op": "gt", "value": "3"},
        {"v": 1, "attr": "a", "op": "eq", "value": "x", "ci": True},
        {"v": 1, "attr": "a", "op": "exists", "value": 1},
        {"v": 1, "attr": "a", "op": "within_last", "value": "P1M"},
        {"v": 1, "stage": {"op": "eq", "value": "Nope"}},
        {"v": 1, "not": {"attr": "a", "op": "in", "value": []}},
    ],
)
def test_the_json_schema_refuses_what_the_validator_refuses(data: dict[str, Any]) -> None:
    assert not SCHEMA_VALIDATOR.is_valid(data)
    violations(data)


def _condition(data: dict[str, Any]) -> Any:
    return parse_condition(data, "c", SEGMENT)


def test_references_resolve_recursively_and_cycles_are_refused() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    definitions = {
        b: SegmentDefinition(("Revenue",), _condition({"v": 1, "in_segment": str(c)})),
        c: SegmentDefinition((), _condition({"v": 1, "attr": "plan", "op": "eq", "value": "pro"})),
    }
    resolved = resolve(_condition({"v": 1, "all": [{"in_segment": str(b)}]}), definitions, (a,))
    assert resolved.segment_ids() == {b, c}
    assert resolved.expanded_json() == {
        "v": 1,
        "all": [
            {
                "all": [
                    {"stage": {"op": "in", "value": ["Revenue"]}},
                    {"attr": "plan", "op": "eq", "value": "pro"},
                ]
            }
        ],
    }
    definitions[c] = SegmentDefinition((), _condition({"v": 1, "in_segment": str(a)}))
    with pytest.raises(ReferenceProblem) as caught:
        resolve(_condition({"v": 1, "all": [{"in_segment": str(b)}]}), definitions, (a,))
    assert caught.value.location == "all[0]"
    assert f"{a} -> {b} -> {c} -> {a}" in caught.value.message
    with pytest.raises(ReferenceProblem, match="does not exist"):
        resolve(_condition({"v": 1, "in_segment": str(uuid.uuid4())}), definitions)


def profile(attributes: dict[str, Any], **fields: Any) -> UserProfile:
    defaults: dict[str, Any] = {
        "stage": "Activation",
        "created_at": AS_OF - timedelta(days=3),
        "stage_entered_at": AS_OF - timedelta(days=2),
    }
    return UserProfile(attributes, **{**defaults, **fields})


def test_within_last_holds_from_a_future_moment_until_the_window_passes_it() -> None:
    evaluator = Evaluator(_condition({"v": 1, "attr": "at", "op": "within_last", "value": "P1D"}))
    moment = AS_OF + timedelta(hours=2)
    user = profile({"at": "2025-06-01T02:00:00Z"})
    assert not evaluator.matches(Context(AS_OF, user))
    assert evaluator.valid_until(Context(AS_OF, user)) == moment
    assert evaluator.matches(Context(moment, user))
    leaves = moment + timedelta(days=1, microseconds=1)
    assert evaluator.valid_until(Context(moment, user)) == leaves
    assert evaluator.matches(Context(leaves - timedelta(microseconds=1), user))
    assert not evaluator.matches(Context(leaves, user))
    assert evaluator.valid_until(Context(leaves, user)) is None


def test_stage_age_flips_exactly_when_the_threshold_passes() -> None:
    entered = AS_OF - timedelta(days=2)
    user = profile({}, stage_entered_at=entered)
    for op, holds_before, holds_after, flip in (
        ("gt", False, True, entered + timedelta(days=7, microseconds=1)),
        ("gte", False, True, entered + timedelta(days=7)),
        ("lt", True, False, entered + timedelta(days=7)),
        ("lte", True, False, entered + timedelta(days=7, microseconds=1)),
    ):
        evaluator = Evaluator(_condition({"v": 1, "stage_age": {"op": op, "value": "P7D"}}))
        assert evaluator.matches(Context(AS_OF, user)) is holds_before
        assert evaluator.valid_until(Context(AS_OF, user)) == flip
        assert evaluator.matches(Context(flip, user)) is holds_after
        assert evaluator.matches(Context(flip - timedelta(microseconds=1), user)) is holds_before


def _profile(user: StoredUser) -> UserProfile:
    """The profile the users service gives of a stored user."""
    entries = [moment for before, after, moment in user.transitions(AS_OF) if before != after]
    created = user.created_at or AS_OF
    return UserProfile(user.attributes, user.stage, created, max(entries, default=None))


@settings(max_examples=300, deadline=None)
@given(TIME_CONDITIONS, TIMED_USERS)
def test_time_alone_changes_no_answer_before_valid_until(
    data: dict[str, Any], user: StoredUser
) -> None:
    """valid_until is a lower bound of the moment the answer changes, for users who
    match and users who do not: walked leaf flip by leaf flip (the only moments an
    answer can change), every answer before it is the first one."""
    condition = _condition(data)
    evaluator = Evaluator(condition)
    leaves = [
        Evaluator(Condition(node, node.source_json))
        for node in condition.nodes()
        if not isinstance(node, AllOf | AnyOf | Not)
    ]
    seen = _profile(user)
    answer = evaluator.matches(Context(AS_OF, seen))
    bound = evaluator.valid_until(Context(AS_OF, seen))
    moment = AS_OF
    while True:
        flips = [flip for leaf in leaves if (flip := leaf.valid_until(Context(moment, seen)))]
        if not flips or (bound is not None and min(flips) >= bound):
            break
        moment = min(flips)
        assert evaluator.matches(Context(moment, seen)) is answer, moment


def test_all_waits_for_its_last_entry_and_any_for_its_first_exit() -> None:
    soon, later = AS_OF + timedelta(days=1), AS_OF + timedelta(days=3)
    user = profile({"a": "2025-06-02", "b": "2025-06-04"})
    a, b = ({"attr": key, "op": "within_last", "value": "P1D"} for key in ("a", "b"))
    for node, at, expected in (
        ({"all": [a, b]}, AS_OF, later),
        ({"any": [a, b]}, AS_OF, soon),
        # Both in their window: the `any` holds until the later one leaves it.
        ({"any": [a, b]}, later, later + timedelta(days=1, microseconds=1)),
        ({"all": [a, {"attr": "c", "op": "exists"}]}, AS_OF, None),
    ):
        evaluator = Evaluator(_condition({"v": 1, **node}))
        assert evaluator.valid_until(Context(at, user)) == expected, node


def test_triggers_read_the_event_and_attribute_changes() -> None:
    condition = parse_condition(
        {
            "v": 1,
            "all": [
                {"event_type": {"op": "starts_with", "value": "billing."}},
                {"attr": "amount", "src": "event", "op": "gt", "value": 0},
                {"attr": "plan", "op": "changed_to", "value": "pro"},
            ],
        },
        "trigger.conditions",
        TRIGGER,
    )
    evaluator = Evaluator(condition)

    def context(event_type: str, amount: Any, before: Any, after: Any) -> Context:
        changes = AttributeChanges({"plan": before}, {"plan": after})
        return Context(AS_OF, event_type=event_type, event_data={"amount": amount}, changes=changes)

    assert evaluator.matches(context("billing.paid", Decimal("9.5"), "free", "pro"))
    assert not evaluator.matches(context("signup", 10, "free", "pro"))
    assert not evaluator.matches(context("billing.paid", "10", "free", "pro"))
    assert not evaluator.matches(context("billing.paid", 10, "pro", "pro"))
    assert not evaluator.matches(
        Context(AS_OF, event_type="billing.paid", event_data={"amount": 1})
    )


def test_explain_shows_each_leaf_with_the_value_it_read() -> None:
    condition = _condition(
        {
            "v": 1,
            "all": [
                {"attr": "plan", "op": "eq", "value": "pro"},
                {"not": {"attr": "email", "op": "ends_with", "value": "@x.io"}},
                {"stage_age": {"op": "gt", "value": "P1D"}},
                {"created_at": {"op": "within_last", "value": "P7D"}},
            ],
        }
    )
    outcomes = Evaluator(condition).explain(Context(AS_OF, profile({"plan": "free"})))
    assert [(o.location, o.actual, o.held) for o in outcomes] == [
        ("all[0]", "free", False),
        ("all[1].not", outcomes[1].actual, False),
        ("all[2]", "P2DT0H0M0S", True),
        ("all[3]", "2025-05-29T00:00:00Z", True),
    ]
    assert repr(outcomes[1].actual) == "MISSING"
