"""What an expression may name and cost, checked when it is saved, and how its
failures read when it runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from services.workflows.cel_cost import (
    MAX_COMPREHENSION_NESTING,
    MAX_LITERAL_ELEMENTS,
    STEP_BUDGET,
)
from services.workflows.cel_rules import FUNCTIONS, MACROS
from services.workflows.cel_syntax import MAX_SYNTAX_DEPTH
from services.workflows.expressions import (
    ExpressionError,
    compile_expression,
    evaluate,
    load_expression,
)
from tests.workflows.scopes import scope

THIRTY_TWO = "[" + ",".join(["1"] * 32) + "]"
# The expression of issue 12 (about 300 characters): 10 s on the event loop before.
HOSTILE = f"size({THIRTY_TWO}.map(a, {THIRTY_TWO}.map(b, {THIRTY_TWO}.map(c, {THIRTY_TWO})))) == 0"


def refusal(source: str) -> str:
    with pytest.raises(ExpressionError) as refused:
        compile_expression(source)
    return str(refused.value)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("__import__('os').system('x') == 0", "calls __import__() and system(), which"),
        ("vars.tags.join(',') == 'a'", "calls join(), which expressions cannot call"),
        ("name.lowerAscii() == 'a'", "calls lowerAscii(), which"),
        ("bool('true')", "calls bool(), which"),
        ("size(a, b) > 0", "calls size() with 2 arguments: write size(x) or x.size()"),
        ("matches(s, 'a')", "calls matches() with 2 arguments: write s.matches(re)"),
        ("now.getHours('Europe/Paris') > 9", "calls .getHours() with 1 argument"),
        ("items.all(x) == true", "calls .all() with 1 argument: write l.all(x, p)"),
        (".seats > 3", "names .seats: names do not start with a dot"),
        ("items.exists(vars, vars > 1)", "names the variable of exists() vars, which hides"),
        ("google.protobuf.Int64Value{value: 1} == 1", "builds a message"),
        (
            "a.map(x, x.map(y, y.map(z, z.map(w, w))))",
            f"nests comprehensions (all, exists, map, filter...) 4 deep, more than"
            f" {MAX_COMPREHENSION_NESTING}",
        ),
        (
            "[" + ",".join(["1"] * (MAX_LITERAL_ELEMENTS + 1)) + "] == []",
            f"writes a list or map of {MAX_LITERAL_ELEMENTS + 1} elements, more than",
        ),
        (HOSTILE, f"steps, over the budget of {STEP_BUDGET:,}"),
        (r"name.matches('\\w{100}')", f"steps, over the budget of {STEP_BUDGET:,}"),
        (" + ".join(["a"] * (MAX_SYNTAX_DEPTH + 1)), "nests operators and calls more than"),
    ],
)
def test_an_expression_is_refused_when_saved(source: str, reason: str) -> None:
    assert reason in refusal(source)


def test_the_expression_of_the_issue_is_refused_for_its_cost() -> None:
    assert refusal(HOSTILE).startswith("would take about ")


@pytest.mark.parametrize(
    "source",
    [
        "seats > 100 && user.stage == 'Activation'",
        "has(vars.coupon) ? vars.coupon.size() > 0 : false",
        "user.attributes.plan in ['pro', 'team'] || int(user.attributes.seats) >= 5",
        "vars.orders.exists(o, o.lines.exists(l, l.sku.startsWith('A')))",
        "vars.items.map(i, i.price * i.quantity).size() > 0",
        "vars.items.filter(i, i.price > 10).map(i, i.sku)",
        "{'total': vars.items.map(i, i.price), 'at': string(now)}",
        "now - timestamp('2030-01-01T00:00:00Z') > duration('24h')",
        "now.getDayOfWeek() == 1 && now.getHours() < 9",
        "type(seats) == int && dyn(seats) > 0",
        "email.matches('^[a-z]+@example[.]com$') && email.endsWith('.com')",
        "b'abc' == bytes('abc') && 1u < uint(2) && 1.5 > double(1)",
        "[1, 2, 3].exists_one(x, x == 2) && {'a': 1}.all(k, k == 'a')",
    ],
)
def test_expressions_within_the_rules_are_saved(source: str) -> None:
    compile_expression(source)


ARGUMENTS = {
    "x": "'12'",
    "s": "'a1'",
    "t": "timestamp('2030-01-01T00:00:00Z')",
    "re": "'a'",
    "part": "'1'",
    "prefix": "'a'",
    "suffix": "'1'",
}
# What timestamp() and duration() read.
TEXTS = {"timestamp": "'2030-01-01T00:00:00Z'", "duration": "'1h'"}


@pytest.mark.parametrize(("name", "form"), [(n, f) for n, fs in FUNCTIONS.items() for f in fs])
def test_each_function_in_each_form_is_saved_and_runs(name: str, form: str) -> None:
    source = re.sub(
        r"\b(x|s|t|re|part|prefix|suffix)\b",
        lambda match: TEXTS.get(name, ARGUMENTS[match.group()]),
        form,
    )
    expression = compile_expression(source)
    evaluate(expression, scope({}))


def test_the_functions_and_macros_are_those_docs_workflows_lists() -> None:
    with open("docs/workflows.md", encoding="utf-8") as docs:
        text = docs.read()
    for form in [f for forms in [*FUNCTIONS.values(), *MACROS.values()] for f in forms]:
        assert f"`{form}`" in text, form


def test_a_stored_expression_loads_whatever_the_rules_are_now() -> None:
    expression = load_expression("name.lowerAscii() == 'a'")
    assert expression.names == frozenset({"name"})


# ---------------------------------------------------------------- run-time failures

USER = {"id": "u1", "stage": "Activation", "attributes": {"seats": 3, "tags": ["a"]}}
CONTEXT: dict[str, Any] = {
    "user": USER,
    "now": datetime(2030, 1, 1, tzinfo=UTC),
    "vars": {"count": 2, "name": "ada", "items": [1, 2], "orders": [{"lines": 1}]},
    "count": 2,
    "name": "ada",
}


@pytest.mark.parametrize(
    ("source", "sentence"),
    [
        ("user.attributes.plan == 'pro'", "user.attributes has no key 'plan'"),
        ("user.attributes['plan'] == 'pro'", "user.attributes has no key 'plan'"),
        ("seats > 100", "variable 'seats' is not set"),
        ("vars.items[5] == 1", "vars.items has no element 5 (it has 2 elements)"),
        ("name + 1 == 2", "cannot add a string and an int: CEL does not convert between types"),
        ("count / 0 == 1", "divides by zero"),
        ("count % 0 == 1", "takes a remainder by zero"),
        ("vars.count.total == 1", "vars.count is an int, which has no field 'total'"),
        ("size(count) > 0", "size() does not take an int"),
        ("count ? true : false", "count is an int, not a bool"),
        ("int(name) == 1", "int() failed on its argument: string parse error"),
        ("name.matches('(')", "matches() failed on its argument: '(' not a valid regex"),
        (
            "vars.orders.exists(o, o.lines.exists(l, l > 0))",
            "an operator or function got values of types it does not take",
        ),
        ("vars.items.all(i, i.price > 0)", "an element of vars.items is an int, which has no"),
        ("vars.items.filter(i, i) == []", "an element of vars.items is an int, not a bool"),
        ("9223372036854775807 + count > 0", "outside the 64-bit integer range"),
        ("timestamp(name) < now", "timestamp() failed on its argument"),
    ],
)
def test_a_failure_reads_as_a_sentence_naming_what_failed(source: str, sentence: str) -> None:
    with pytest.raises(ExpressionError) as failed:
        evaluate(compile_expression(source), scope(CONTEXT))
    message = str(failed.value)
    assert message.startswith(f"{source!r} failed: "), message
    assert sentence in message, message
