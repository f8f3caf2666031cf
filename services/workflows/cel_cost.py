"""What an expression may cost, in steps, before the CEL library evaluates it.

The library holds the GIL for a whole evaluation and has no limit of its own,
so a slow expression holds the service's event loop; its costs grow faster
than one would guess. Measured (bench/expressions_bench.py), one step is
about the time of copying one value, 20 to 30 ns:

- a field or an index (`vars.items`, `l[0]`) copies the value it reads, all
  of it, and so does each turn of a comprehension with its element;
- `map` and `filter` copy the list they have built so far on every turn (it
  is `@result + [x]`): n turns copy about n * n elements;
- `+` copies both lists or strings; `==` and `in` walk them.

The estimate is an abstract interpretation of the syntax tree over the
values themselves where they are known (the context of an evaluation) and
over shapes otherwise (a comprehension's variable: the join of the elements
it ranges over, as long as the longest, as heavy as the heaviest). Every cost
is rounded up, so the estimate bounds the steps an evaluation takes; when a
workflow is saved, the values are unknown and each counts as a collection of
NOMINAL_LENGTH elements.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

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
    MessageLiteral,
    Select,
    Unary,
    children,
    walk,
)

# An evaluation under this many steps takes at most a few milliseconds
# (calibrated by bench/expressions_bench.py, figures in bench/RESULTS.md).
STEP_BUDGET = 100_000
# What an unknown list, map or string counts as when a workflow is saved.
NOMINAL_LENGTH = 10
# Comprehensions inside comprehensions: each level multiplies the cost by a length.
MAX_COMPREHENSION_NESTING = 3
# Elements of a list or map literal.
MAX_LITERAL_ELEMENTS = 256

# Steps of one node of the tree, and of one turn of a comprehension's loop.
NODE = 1
TURN = 8
# A string counts as two values (copying one allocates it), and one more per
# this many characters, when copied or scanned.
STRING_STEPS = 2
CHARACTERS_PER_STEP = 64
# A regular expression is compiled on each call (about a microsecond, and a
# quarter of one per atom it expands to), then scans its text (a few
# nanoseconds a character, more for a large pattern).
REGEX_STEPS = 64
COMPILE_STEPS_PER_ATOM = 8
MATCHED_CHARACTERS_PER_STEP = 8
SCANNED_ATOMS = 100
# Atoms of the classes that compile to large automata: Unicode letters and
# word characters (\w{10} takes 2 ms), digits, any character and spaces.
CLASS_ATOMS = (
    (re.compile(r"\\[wWpP]"), 1000),
    (re.compile(r"\\[dD]"), 100),
    (re.compile(r"\\[sS]|(?<!\\)\.|\[\^"), 20),
)
# Case-insensitive matching multiplies the atoms a pattern compiles to.
CASE_FOLDING = 8
# What a pattern the expression computes may expand to: more than the budget
# allows, as the regex library compiles patterns of many megabytes.
UNKNOWN_PATTERN_ATOMS = 100_000
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)


@dataclass(frozen=True, slots=True)
class Shape:
    """What the estimate knows of a value it cannot see: upper bounds."""

    weight: int  # values copied with it (1 for a scalar, 1 + its elements' for a list)
    length: int = 0  # elements of a list or map, characters of a string
    item: Shape | None = None  # the join of a list's elements or a map's values
    key: Shape | None = None  # the join of a map's keys (None: not a map)
    fields: Mapping[str, Shape] | None = None  # a map's values by key, when all keys are known


@dataclass(frozen=True, slots=True)
class Known:
    """A value the estimate sees: one from the context, or a literal."""

    value: Any


Value = Shape | Known

SCALAR = Shape(1)
# What an evaluation yields where it fails: nothing after it is evaluated.
FAILED = Shape(0)
# A value unknown when a workflow is saved: its elements and fields are UNKNOWN too.
UNKNOWN = Shape(1 + NOMINAL_LENGTH, NOMINAL_LENGTH)


def text_weight(length: int) -> int:
    return STRING_STEPS + length // CHARACTERS_PER_STEP


def string_shape(length: int) -> Shape:
    return Shape(text_weight(length), length)


def estimate(tree: Expr, context: Mapping[str, Any]) -> int:
    """Steps evaluating `tree` over `context` takes at most."""
    roots: dict[str, Value] = {name: Known(value) for name, value in context.items()}
    return _Estimate().total(tree, roots)


def nominal_estimate(tree: Expr, free_names: Iterable[str]) -> int:
    """Steps evaluating `tree` takes when each name it reads is a collection of
    NOMINAL_LENGTH elements (`now` a timestamp)."""
    roots: dict[str, Value] = {name: UNKNOWN for name in free_names}
    roots["now"] = SCALAR
    return _Estimate().total(tree, roots)


def comprehension_nesting(tree: Expr) -> int:
    """How deep comprehensions nest in each other's bodies (0: none)."""
    deepest, pending = 0, [(tree, 0)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, Comprehension):
            deepest = max(deepest, level + 1)
            pending.append((node.range, level))
            pending.extend((part, level + 1) for part in (node.predicate, node.transform) if part)
        else:
            pending.extend((child, level) for child in children(node))
    return deepest


def largest_literal(tree: Expr) -> int:
    """Elements of the longest list or map literal."""
    sizes = [
        len(node.elements) if isinstance(node, ListLiteral) else len(node.entries)
        for node in walk(tree)
        if isinstance(node, ListLiteral | MapLiteral)
    ]
    return max(sizes, default=0)


def pattern_atoms(pattern: str) -> int:
    """An upper bound of the atoms a regular expression expands to: its length (a
    large class counting as many), times every counted repetition's bound."""
    atoms = len(pattern) + sum(
        weight * len(found.findall(pattern)) for found, weight in CLASS_ATOMS
    )
    if "(?i" in pattern:
        atoms *= CASE_FOLDING
    for low, comma, high in _REPETITION.findall(pattern):
        atoms *= max(int(low) + (1 if comma and not high else 0), int(high or 0), 1)
        atoms = min(atoms, UNKNOWN_PATTERN_ATOMS)
    return min(atoms, UNKNOWN_PATTERN_ATOMS)


_REPETITION = re.compile(r"\{(\d+)(,?)(\d*)\}")
_CONVERSIONS = frozenset({"int", "uint", "double", "timestamp", "duration"})
_TEXT_CONVERSIONS = frozenset({"string", "bytes"})
_TEXT_TESTS = frozenset({"contains", "startsWith", "endsWith"})
# Types whose values count as one step, recognised at once.
_NUMBERS = frozenset({int, float, bool, type(None)})
# The longest text string() or bytes() makes of a number, a bool or a moment.
_SCALAR_TEXT = 40


class _Estimate:
    """One estimate: weights and shapes of the context's values are computed once
    each, by the value's id (each kept with its value, so that a list a literal
    made, and then dropped, cannot lend its id to another)."""

    def __init__(self) -> None:
        self._weights: dict[int, tuple[Any, int]] = {}
        self._summaries: dict[int, tuple[Any, Shape]] = {}

    def total(self, tree: Expr, roots: dict[str, Value]) -> int:
        cost, result = self.cost(tree, roots)
        # The result is converted back into Python.
        return cost + self.weight(result)

    # ------------------------------------------------------------ values

    def weight(self, value: Value) -> int:
        if isinstance(value, Shape):
            return value.weight
        return self._weight(value.value)

    def _weight(self, value: Any) -> int:
        if isinstance(value, str | bytes):
            return text_weight(len(value))
        if not isinstance(value, list | dict):
            return 1
        known = self._weights.get(id(value))
        if known is not None:
            return known[1]
        # A loop with a quick test for numbers rather than a call per part: the
        # estimate walks the data an expression reads, and must cost less than it.
        weight = 1
        for part in chain(value, value.values()) if isinstance(value, dict) else value:
            kind = type(part)
            if kind in _NUMBERS:
                weight += 1
            elif kind is str:
                weight += STRING_STEPS + len(part) // CHARACTERS_PER_STEP
            else:
                weight += self._weight(part)
        self._weights[id(value)] = (value, weight)
        return weight

    def length(self, value: Value) -> int:
        if isinstance(value, Shape):
            return value.length
        return len(value.value) if isinstance(value.value, str | bytes | list | dict) else 0

    def summary(self, value: Value) -> Shape:
        if isinstance(value, Shape):
            return value
        if not isinstance(value.value, list | dict):
            return self._joined([value.value]) or FAILED
        known = self._summaries.get(id(value.value))
        if known is None:
            known = (value.value, self._joined([value.value]) or FAILED)
            self._summaries[id(value.value)] = known
        return known[1]

    def _joined(self, values: Iterable[Any]) -> Shape | None:
        """The join of the shapes of `values`, computed for all of them at once:
        their lists' elements are joined together, their maps' values key by key."""
        lists: list[list[Any]] = []
        maps: list[dict[Any, Any]] = []
        longest_text, scalar = -1, False
        for value in values:
            if type(value) in _NUMBERS:
                scalar = True
            elif isinstance(value, str | bytes):
                longest_text = max(longest_text, len(value))
            elif isinstance(value, list):
                lists.append(value)
            elif isinstance(value, dict):
                maps.append(value)
            else:
                scalar = True
        shapes = [SCALAR] if scalar else []
        if longest_text >= 0:
            shapes.append(string_shape(longest_text))
        if lists:
            elements = self._joined(chain.from_iterable(lists))
            shapes.append(Shape(self._heaviest(lists), max(map(len, lists)), elements))
        if maps:
            shapes.append(self._maps(maps))
        return _join_all(shapes)

    def _maps(self, maps: list[dict[Any, Any]]) -> Shape:
        by_key: dict[Any, list[Any]] = {}
        for one in maps:
            for key, item in one.items():
                by_key.setdefault(key, []).append(item)
        fields = {key: self._joined(items) or FAILED for key, items in by_key.items()}
        named = fields if all(isinstance(key, str) for key in by_key) else None
        keys = self._joined(by_key) or FAILED
        return Shape(
            self._heaviest(maps), max(map(len, maps)), _join_all(fields.values()), keys, named
        )

    def _heaviest(self, containers: Iterable[Any]) -> int:
        return max(map(self._weight, containers))

    def join(self, left: Value, right: Value) -> Value:
        if left is right:
            return left
        return join(self.summary(left), self.summary(right))

    def field(self, value: Value, name: str) -> Value:
        if isinstance(value, Known):
            found = value.value.get(name, FAILED) if isinstance(value.value, dict) else FAILED
            return found if found is FAILED else Known(found)
        if value is UNKNOWN:
            return UNKNOWN
        if value.key is None:
            return FAILED
        if value.fields is None:
            return value.item or FAILED
        return value.fields.get(name, FAILED)

    def element(self, container: Value, index: Value) -> Value:
        """`container[index]`: the element itself when both are known."""
        if isinstance(container, Known) and isinstance(index, Known):
            found = _lookup(container.value, index.value)
            return FAILED if found is _MISSING else Known(found)
        shape = self.summary(container)
        return UNKNOWN if shape is UNKNOWN else shape.item or FAILED

    def ranged(self, collection: Value) -> Value:
        """What a comprehension's variable takes: a list's elements, a map's keys."""
        shape = self.summary(collection)
        if shape is UNKNOWN:
            return UNKNOWN
        return shape.key if shape.key is not None else shape.item or FAILED

    # ------------------------------------------------------------ nodes

    def cost(self, node: Expr, scope: dict[str, Value]) -> tuple[int, Value]:
        match node:
            case Literal(value=value):
                known = Known(value)
                return NODE + self.weight(known), known
            case Ident(name=name):
                if name in scope:
                    return NODE, scope[name]
                return NODE, SCALAR if name in TYPE_NAMES else FAILED
            case Select(operand=operand, field=name):
                cost, value = self.cost(operand, scope)
                result = self.field(value, name)
                return cost + NODE + self.weight(result), result
            case Index(operand=operand, index=index):
                cost, container = self.cost(operand, scope)
                index_cost, key = self.cost(index, scope)
                result = self.element(container, key)
                return cost + index_cost + NODE + self.weight(result), result
            case Has(select=select):
                cost, _ = self.cost(select.operand, scope)
                return cost + NODE, SCALAR
            case Unary(operand=operand):
                cost, _ = self.cost(operand, scope)
                return cost + NODE, SCALAR
        return self.compound(node, scope)

    def compound(self, node: Expr, scope: dict[str, Value]) -> tuple[int, Value]:
        match node:
            case Binary():
                return self.binary(node, scope)
            case Logical(operands=operands):
                costs = [self.cost(operand, scope)[0] for operand in operands]
                return sum(costs) + NODE * len(costs), SCALAR
            case Conditional(condition=condition, then=then, otherwise=otherwise):
                cost, _ = self.cost(condition, scope)
                then_cost, then_value = self.cost(then, scope)
                other_cost, other_value = self.cost(otherwise, scope)
                result = self.join(then_value, other_value)
                return cost + NODE + max(then_cost, other_cost), result
            case Call():
                return self.call(node, scope)
            case Comprehension():
                return self.comprehension(node, scope)
            case ListLiteral(elements=elements):
                return self.list_literal(elements, scope)
            case MapLiteral(entries=entries):
                return self.map_literal(entries, scope)
            case MessageLiteral(fields=fields):
                costs = [self.cost(value, scope)[0] for _, value in fields]
                return sum(costs) + NODE, FAILED
        raise TypeError(f"not a syntax tree node: {node!r}")

    def binary(self, node: Binary, scope: dict[str, Value]) -> tuple[int, Value]:
        left_cost, left = self.cost(node.left, scope)
        right_cost, right = self.cost(node.right, scope)
        cost = left_cost + right_cost + NODE
        if node.op == "+":
            return self.concatenation(cost, self.summary(left), self.summary(right))
        if node.op in ("==", "!=", "<", "<=", ">", ">="):
            return cost + min(self.weight(left), self.weight(right)), SCALAR
        if node.op == "in":
            # A list is walked; a key is hashed.
            return cost + self.length(right) + self.weight(right) + self.weight(left), SCALAR
        return cost, SCALAR

    def concatenation(self, cost: int, left: Shape, right: Shape) -> tuple[int, Value]:
        """`+`: both lists or strings are copied into a new one (and two numbers are
        counted as if copied, which costs as much as adding them)."""
        cost += left.weight + right.weight
        if left.weight == right.weight == 1 and not (left.length or right.length):
            return cost, SCALAR
        items = [shape.item for shape in (left, right) if shape.item is not None]
        result = Shape(left.weight + right.weight, left.length + right.length, _join_all(items))
        return cost, result

    def call(self, node: Call, scope: dict[str, Value]) -> tuple[int, Value]:
        operands = [node.target] if node.target is not None else []
        costs, values = [], []
        for operand in [*operands, *node.args]:
            cost, value = self.cost(operand, scope)
            costs.append(cost)
            values.append(value)
        cost = sum(costs) + NODE
        function = node.function
        subject = values[0] if values else FAILED
        if function == "size":
            return cost + self.length(subject) // CHARACTERS_PER_STEP, SCALAR
        if function in _CONVERSIONS:
            return cost + self.weight(subject), SCALAR
        if function in _TEXT_CONVERSIONS:
            text = string_shape(max(self.length(subject), _SCALAR_TEXT))
            return cost + self.weight(subject) + text.weight, text
        if function == "dyn":
            return cost, subject
        if function in _TEXT_TESTS:
            return cost + sum(map(self.weight, values)), SCALAR
        if function == "matches" and len(values) == 2:
            return cost + self.weight(subject) + self.matching(subject, values[1]), SCALAR
        return cost, SCALAR

    def matching(self, text: Value, pattern: Value) -> int:
        if isinstance(pattern, Known) and isinstance(pattern.value, str):
            atoms = pattern_atoms(pattern.value)
        elif pattern is UNKNOWN:
            atoms = NOMINAL_LENGTH
        else:
            atoms = UNKNOWN_PATTERN_ATOMS
        scanned = self.length(text) * (1 + atoms // SCANNED_ATOMS) // MATCHED_CHARACTERS_PER_STEP
        return REGEX_STEPS + COMPILE_STEPS_PER_ATOM * atoms + scanned

    def comprehension(self, node: Comprehension, scope: dict[str, Value]) -> tuple[int, Value]:
        cost, collection = self.cost(node.range, scope)
        turns = self.length(collection)
        variable = self.ranged(collection)
        inner = {**scope, node.variable: variable}
        body, produced = 0, variable
        for part in (node.predicate, node.transform):
            if part is not None:
                part_cost, produced = self.cost(part, inner)
                body += part_cost
        # The accumulator is set up, and read at the end, once each.
        cost += 2 * NODE + turns * (TURN + self.weight(variable) + body)
        if node.macro not in ("map", "filter"):
            return cost, SCALAR
        element = self.summary(produced if node.macro == "map" else variable)
        # Turn i evaluates `@result + [x]`: x copied into a list, which is copied
        # with the i - 1 elements so far into a new list (each list with its
        # header), which is copied into the loop's scope; at the end the result
        # is copied once more.
        cost += turns * ((turns + 3) * element.weight + 3) + 1
        return cost, Shape(1 + turns * element.weight, turns, element)

    def elements(self, nodes: Iterable[Expr], scope: dict[str, Value]) -> tuple[int, list[Value]]:
        """The values of a literal's parts, each evaluated and copied into it."""
        cost, values = 0, []
        for node in nodes:
            part_cost, value = self.cost(node, scope)
            cost += part_cost + self.weight(value)
            values.append(value)
        return cost, values

    def list_literal(self, nodes: tuple[Expr, ...], scope: dict[str, Value]) -> tuple[int, Value]:
        cost, values = self.elements(nodes, scope)
        known = [value.value for value in values if isinstance(value, Known)]
        if len(known) == len(values):
            return cost + NODE, Known(known)
        shapes = [self.summary(value) for value in values]
        weight = 1 + sum(shape.weight for shape in shapes)
        return cost + NODE, Shape(weight, len(values), _join_all(shapes))

    def map_literal(
        self, entries: tuple[tuple[Expr, Expr], ...], scope: dict[str, Value]
    ) -> tuple[int, Value]:
        key_cost, keys = self.elements((key for key, _ in entries), scope)
        value_cost, values = self.elements((value for _, value in entries), scope)
        cost = key_cost + value_cost + NODE
        names = [key.value for key in keys if isinstance(key, Known)]
        # Keys Python would merge (1 and True) stay apart in CEL: such a map is a shape.
        distinct = len(dict.fromkeys(names)) == len(keys)
        if not distinct or not all(isinstance(name, str | int | bool) for name in names):
            shapes = [self.summary(value) for value in [*keys, *values]]
            weight = 1 + sum(shape.weight for shape in shapes)
            item, key = _join_all(shapes[len(keys) :]), _join_all(shapes[: len(keys)])
            return cost, Shape(weight, len(entries), item, key or FAILED)
        known = [value.value for value in values if isinstance(value, Known)]
        if len(known) == len(values):
            return cost, Known(dict(zip(names, known, strict=True)))
        fields = {name: self.summary(value) for name, value in zip(names, values, strict=True)}
        weight = 1 + sum(map(self._weight, names)) + sum(f.weight for f in fields.values())
        key = self._joined(names) or FAILED
        return cost, Shape(weight, len(entries), _join_all(fields.values()), key, _named(fields))


def _named(fields: dict[Any, Shape]) -> dict[str, Shape] | None:
    """The fields of a map whose keys are all strings (others are found by index, not by name)."""
    if all(isinstance(name, str) for name in fields):
        return fields
    return None


_MISSING = object()


def _lookup(container: Any, index: Any) -> Any:
    if isinstance(container, dict):
        return container.get(index, _MISSING) if isinstance(index, str | int | bool) else _MISSING
    if isinstance(container, list) and type(index) is int and 0 <= index < len(container):
        return container[index]
    return _MISSING


def join(left: Shape, right: Shape) -> Shape:
    """A shape at least as large as both in every respect."""
    if left is right or right is FAILED:
        return left
    if left is FAILED:
        return right
    return Shape(
        max(left.weight, right.weight),
        max(left.length, right.length),
        _join_parts(left, right, _item_of),
        _join_parts(left, right, _key_of),
        _join_fields(left, right),
    )


def _item_of(shape: Shape) -> Shape | None:
    return UNKNOWN if shape is UNKNOWN else shape.item


def _key_of(shape: Shape) -> Shape | None:
    return UNKNOWN if shape is UNKNOWN else shape.key


def _join_parts(left: Shape, right: Shape, part: Callable[[Shape], Shape | None]) -> Shape | None:
    mine, theirs = part(left), part(right)
    if mine is None or theirs is None:
        return mine or theirs
    return join(mine, theirs)


def _join_fields(left: Shape, right: Shape) -> Mapping[str, Shape] | None:
    """Fields of either; a value that is no map has none to contribute."""
    if left is UNKNOWN or right is UNKNOWN:
        return None
    if left.key is None or right.key is None:
        return left.fields if right.key is None else right.fields
    if left.fields is None or right.fields is None:
        return None
    merged = dict(left.fields)
    for name, shape in right.fields.items():
        merged[name] = join(merged[name], shape) if name in merged else shape
    return merged


def _join_all(shapes: Iterable[Shape]) -> Shape | None:
    joined: Shape | None = None
    for shape in shapes:
        joined = shape if joined is None else join(joined, shape)
    return joined
