"""The cost estimate of an expression bounds what evaluating it copies and
walks: on generated data and expressions, the estimate is never below the
count a small reference evaluator makes as it evaluates the expression the
way the CEL library does (each field read copies its value, each turn of a
comprehension its element, `map` and `filter` their list so far)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.workflows.cel_cost import (
    CHARACTERS_PER_STEP,
    NOMINAL_LENGTH,
    STEP_BUDGET,
    estimate,
    nominal_estimate,
)
from services.workflows.cel_syntax import (
    Binary,
    Call,
    Comprehension,
    Conditional,
    Expr,
    Has,
    Ident,
    Index,
    ListLiteral,
    Literal,
    Logical,
    MapLiteral,
    Select,
    Unary,
    parse,
)
from services.workflows.expressions import ExpressionError, compile_expression, evaluate
from tests.workflows.scopes import scope


class Stop(Exception):
    """Where the CEL library would fail: the evaluation ends there."""


def size(value: Any) -> int:
    """Values copied with `value`: one per scalar, one per CHARACTERS_PER_STEP characters."""
    if isinstance(value, str):
        return 1 + len(value) // CHARACTERS_PER_STEP
    if isinstance(value, list):
        return 1 + sum(map(size, value))
    if isinstance(value, dict):
        return 1 + sum(map(size, value)) + sum(map(size, value.values()))
    return 1


def same_kind(left: Any, right: Any) -> bool:
    return type(left) is type(right)


class Reference:
    """Evaluates a tree as the CEL library does (its macros as it expands them),
    counting nodes evaluated and values copied or compared."""

    def __init__(self) -> None:
        self.count = 0

    def run(self, tree: Expr, context: dict[str, Any]) -> None:
        with contextlib.suppress(Stop):
            self.eval(tree, context)

    def eval(self, node: Expr, scope: dict[str, Any]) -> Any:
        self.count += 1
        match node:
            case Literal(value=value):
                self.count += size(value)
                return value
            case Ident(name=name):
                if name not in scope:
                    raise Stop
                return scope[name]
            case Select(operand=operand, field=field):
                return self.copied(self.lookup(self.eval(operand, scope), field))
            case Index(operand=operand, index=index):
                container = self.eval(operand, scope)
                return self.copied(self.lookup(container, self.eval(index, scope)))
            case Has(select=select):
                container = self.eval(select.operand, scope)
                if not isinstance(container, dict):
                    raise Stop
                return select.field in container
            case Unary(op="!", operand=operand):
                return not self.boolean(self.eval(operand, scope))
            case Unary(operand=operand):
                value = self.eval(operand, scope)
                if type(value) is not int:
                    raise Stop
                return -value
            case Binary():
                return self.binary(node, scope)
            case Logical(op=op, operands=operands):
                for operand in operands:
                    if self.boolean(self.eval(operand, scope)) == (op == "||"):
                        return op == "||"
                return op == "&&"
            case Conditional(condition=condition, then=then, otherwise=otherwise):
                chosen = then if self.boolean(self.eval(condition, scope)) else otherwise
                return self.eval(chosen, scope)
            case Call(function="size", args=(argument,)):
                value = self.eval(argument, scope)
                if not isinstance(value, str | list | dict):
                    raise Stop
                self.count += len(value) // CHARACTERS_PER_STEP
                return len(value)
            case Comprehension():
                return self.comprehension(node, scope)
            case ListLiteral(elements=elements):
                return [self.copied(self.eval(element, scope)) for element in elements]
            case MapLiteral(entries=entries):
                pairs = [(self.eval(k, scope), self.eval(v, scope)) for k, v in entries]
                self.count += sum(size(k) + size(v) for k, v in pairs)
                return dict(pairs)
        raise AssertionError(f"the reference does not evaluate {node}")

    def copied(self, value: Any) -> Any:
        self.count += size(value)
        return value

    def lookup(self, container: Any, key: Any) -> Any:
        if isinstance(container, dict) and isinstance(key, str) and key in container:
            return container[key]
        if isinstance(container, list) and type(key) is int and 0 <= key < len(container):
            return container[key]
        raise Stop

    def boolean(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Stop
        return value

    def binary(self, node: Binary, scope: dict[str, Any]) -> Any:
        left, right = self.eval(node.left, scope), self.eval(node.right, scope)
        if node.op == "in":
            return self.member(left, right)
        if node.op in ("==", "!="):
            self.count += min(size(left), size(right))
            return (left == right and same_kind(left, right)) == (node.op == "==")
        if not same_kind(left, right) or isinstance(left, bool | dict):
            raise Stop
        if node.op == "+":
            self.count += size(left) + size(right) if not isinstance(left, int) else 0
            return left + right
        if not isinstance(left, int):
            raise Stop
        operations: dict[str, Callable[[int, int], Any]] = {
            "-": lambda a, b: a - b,
            "*": lambda a, b: a * b,
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        return operations[node.op](left, right)

    def member(self, item: Any, container: Any) -> bool:
        if isinstance(container, dict):
            self.count += size(item)
            return item in container if isinstance(item, str) else False
        if not isinstance(container, list):
            raise Stop
        for element in container:
            self.count += 1 + min(size(item), size(element))
            if element == item and same_kind(element, item):
                return True
        return False

    def comprehension(self, node: Comprehension, scope: dict[str, Any]) -> Any:
        collection = self.eval(node.range, scope)
        if not isinstance(collection, list | dict):
            raise Stop
        accumulator: Any = [] if node.macro in ("map", "filter") else node.macro == "all"
        matches = 0
        for element in list(collection):
            if node.macro in ("all", "exists") and accumulator == (node.macro == "exists"):
                break
            self.count += 3  # the loop's condition, and the step's own nodes
            inner = {**scope, node.variable: self.copied(element)}
            held = (
                True if node.predicate is None else self.boolean(self.eval(node.predicate, inner))
            )
            if node.macro in ("all", "exists"):
                accumulator = held
            elif node.macro == "exists_one":
                matches += held
            elif held:
                added = self.eval(node.transform, inner) if node.transform else element
                # [added], then it and the list so far into a new list, then into the scope.
                self.count += 3 + size(added) + size(accumulator) + 1 + size(added)
                accumulator = [*accumulator, added]
                self.count += size(accumulator)
            else:
                self.count += 1 + size(accumulator)
        if node.macro == "exists_one":
            return matches == 1
        return self.copied(accumulator)


# ---------------------------------------------------------------- generated cases

SCALARS = st.one_of(st.integers(-3, 3), st.text("ab", max_size=3), st.booleans())
DATA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(["k", "l", "s"]), inner, max_size=3),
    ),
    max_leaves=25,
)
CONTEXT = st.fixed_dictionaries(
    {"a": st.lists(st.integers(-3, 3), max_size=8), "b": DATA, "c": DATA, "d": DATA}
)
VARIABLES = ["x", "y"]


def expressions(parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(
            lambda r, macro, v, body: f"({r}).{macro}({v}, {body})",
            parts,
            st.sampled_from(["all", "exists", "exists_one", "map", "filter"]),
            st.sampled_from(VARIABLES),
            parts,
        ),
        st.builds(
            lambda r, v, p, f: f"({r}).map({v}, {p}, {f})", parts, st.just("x"), parts, parts
        ),
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", parts, st.sampled_from(OPERATORS), parts),
        st.builds(lambda a, b, c: f"({a}) ? ({b}) : ({c})", parts, parts, parts),
        st.builds(lambda a, f: f"({a}).{f}", parts, st.sampled_from(["k", "l", "s"])),
        st.builds(lambda a, i: f"({a})[{i}]", parts, st.sampled_from(["0", "1", "'k'"])),
        st.builds(lambda a: f"has(({a}).k)", parts),
        st.builds(lambda a: f"size({a})", parts),
        st.builds(lambda a: f"!({a})", parts),
        st.lists(parts, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.builds(lambda a, b: f"{{'k': {a}, 'l': {b}}}", parts, parts),
    )


OPERATORS = ["+", "-", "*", "<", "==", "!=", "in", "&&", "||"]
ATOMS = st.sampled_from(["vars.a", "vars.b", "vars.c", "vars.d", "x", "y", "1", "'ab'", "true"])
EXPRESSIONS: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(ATOMS, ATOMS, expressions(EXPRESSIONS))
)


@settings(max_examples=1000, deadline=None)
@given(EXPRESSIONS, CONTEXT)
def test_the_estimate_bounds_what_evaluating_copies_and_walks(
    source: str, variables: dict[str, Any]
) -> None:
    tree, context = parse(source), {"vars": variables}
    reference = Reference()
    reference.run(tree, context)
    assert estimate(tree, context) >= reference.count


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        ("vars.l.map(x, x + 1)", {"l": list(range(50))}),
        ("vars.l.filter(x, x > 0)", {"l": list(range(50))}),
        ("vars.l.map(x, vars.l.map(y, [x, y]))", {"l": list(range(12))}),
        (
            "vars.o.exists(o, o.lines.exists(l, l.sku == 's'))",
            {"o": [{"lines": [{"sku": "s"}]}] * 9},
        ),
        ("vars.m.all(k, vars.m[k] > 0)", {"m": {str(n): n for n in range(30)}}),
        ("vars.l + vars.l + vars.l == vars.l", {"l": [[1, 2], [3]] * 10}),
    ],
)
def test_the_estimate_bounds_particular_evaluations(source: str, variables: dict[str, Any]) -> None:
    tree, context = parse(source), {"vars": variables}
    reference = Reference()
    reference.run(tree, context)
    assert reference.count > 0
    assert estimate(tree, context) >= reference.count


def test_map_and_filter_cost_the_square_of_their_length() -> None:
    tree = parse("vars.l.map(x, x)")
    costs = [estimate(tree, {"vars": {"l": list(range(n))}}) for n in (100, 200, 400)]
    assert costs[1] > 3.5 * costs[0] and costs[2] > 3.5 * costs[1]
    linear = parse("vars.l.all(x, x >= 0)")
    costs = [estimate(linear, {"vars": {"l": list(range(n))}}) for n in (100, 200, 400)]
    assert costs[1] < 2.1 * costs[0] and costs[2] < 2.1 * costs[1]


def test_reading_a_field_costs_the_size_of_what_it_reads() -> None:
    tree = parse("size(vars.big) + size(vars.small)")
    small = estimate(tree, {"vars": {"big": [1], "small": [1]}})
    large = estimate(tree, {"vars": {"big": list(range(1000)), "small": [1]}})
    assert large - small >= 999


def test_a_comprehension_variable_is_as_large_as_the_largest_element() -> None:
    tree = parse("vars.l.map(x, x)")
    uneven, even = [[1] * 100] + [[1]] * 9, [[1] * 100] * 10
    # Only the first read of the list itself, once, costs less.
    read_once = size(even) - size(uneven)
    assert (
        estimate(tree, {"vars": {"l": uneven}}) == estimate(tree, {"vars": {"l": even}}) - read_once
    )


def test_unknown_values_count_as_nominal_collections() -> None:
    tree = parse("vars.items.map(i, i.price)")
    nominal = nominal_estimate(tree, {"vars"})
    items = [{"price": 1}] * NOMINAL_LENGTH
    assert nominal >= estimate(tree, {"vars": {"items": items}})


def test_an_evaluation_over_the_budget_is_refused_with_a_sentence() -> None:
    expression = compile_expression("vars.items.map(a, vars.items.map(b, a + b)).size() > 0")
    assert evaluate(expression, scope({"vars": {"items": list(range(10))}})) is True
    with pytest.raises(ExpressionError) as refused:
        evaluate(expression, scope({"vars": {"items": list(range(1000))}}))
    message = str(refused.value)
    assert "was not evaluated: it would take about " in message
    assert f"steps, over the budget of {STEP_BUDGET:,}" in message


def test_only_the_names_an_expression_reads_are_handed_to_the_library() -> None:
    expression = compile_expression("seats > 3")
    assert expression.names == frozenset({"seats"})
    huge = {"seats": 5, "other": list(range(100_000))}
    assert evaluate(expression, scope({**huge, "vars": huge})) is True
