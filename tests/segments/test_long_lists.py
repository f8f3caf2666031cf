"""has, has_any and has_all on lists longer than the evaluator scans (it reads
them into sets, once per evaluation) answer as a scan would: some element
equal to the value, with strict JSON equality (no coercion, numbers by value).
A leaf on a list of tens of thousands, or a hundred leaves on one, costs
milliseconds, not seconds (has_all was quadratic)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conditions import SEGMENT, Context, Evaluator, UserProfile, parse_condition
from conditions.values import json_equal
from tests.segments.strategies import AS_OF, NUMBERS, SCALARS, TEXTS, TIMESTAMPS

WANTED = st.one_of(TEXTS.filter(bool), NUMBERS, st.booleans(), TIMESTAMPS)
LONG = st.lists(st.one_of(SCALARS, st.lists(SCALARS, max_size=1), st.none()), min_size=17)


def scanned(op: str, expected: Any, values: list[Any]) -> bool:
    def present(one: Any) -> bool:
        return any(json_equal(value, one) for value in values)

    if op == "has":
        return present(expected)
    return (any if op == "has_any" else all)(present(one) for one in expected)


def holds(condition: dict[str, Any], attributes: dict[str, Any]) -> bool:
    evaluator = Evaluator(parse_condition({"v": 1, **condition}, "c", SEGMENT))
    profile = UserProfile(attributes, "Activation", AS_OF, AS_OF)
    return evaluator.matches(Context(as_of=AS_OF, user=profile))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["has", "has_any", "has_all"]), LONG, st.data())
def test_long_lists_answer_as_a_scan(op: str, values: list[Any], data: st.DataObject) -> None:
    # Values of the list itself, so that most conditions can hold.
    scalars = [v for v in values if v not in (None, "") and not isinstance(v, list)] or [1]
    wanted = st.one_of(WANTED, st.sampled_from(scalars))
    if op == "has":
        expected: Any = data.draw(wanted)
    else:
        expected = data.draw(st.lists(wanted, min_size=1, max_size=6))
    condition = {"attr": "tags", "op": op, "value": expected}
    assert holds(condition, {"tags": values}) == scanned(op, expected, values)


def test_a_hundred_leaves_on_a_list_of_thousands_read_it_once() -> None:
    tags = [f"t{n}" for n in range(20_000)]
    leaves: list[dict[str, Any]] = [
        {"attr": "tags", "op": "has", "value": f"x{n}"} for n in range(98)
    ]
    leaves.append({"attr": "tags", "op": "has_all", "value": tags[-1000:]})
    evaluator = Evaluator(parse_condition({"v": 1, "any": leaves}, "c", SEGMENT))
    context = Context(as_of=AS_OF, user=UserProfile({"tags": tags}, "Activation", AS_OF, AS_OF))
    assert evaluator.matches(context)
    assert [list_ is tags for list_, _ in context.lists.values()] == [True]
