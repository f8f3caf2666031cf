"""What an expression may name, checked when a workflow is saved, and how its
failures read when it runs.

An expression may call the functions of the CEL standard definitions that
the CEL library implements (FUNCTIONS, listed in docs/workflows.md), in the
forms listed, and the macros. Any name it reads is `vars`, `user`, `now`, a
comprehension's variable, a type name (`type(x) == int`) or one of the
execution's variables; which variables an execution has is known only when
it runs, so a missing one is a run-time error, which reads as a sentence
naming it (`variable 'seats' is not set`), as do the library's other errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from services.workflows.cel_cost import (
    MAX_COMPREHENSION_NESTING,
    MAX_LITERAL_ELEMENTS,
    NOMINAL_LENGTH,
    STEP_BUDGET,
    TYPE_NAMES,
    comprehension_nesting,
    largest_literal,
    nominal_estimate,
)
from services.workflows.cel_syntax import (
    Call,
    Comprehension,
    Conditional,
    Expr,
    Ident,
    Index,
    Literal,
    Logical,
    MessageLiteral,
    Select,
    Unary,
    children,
    walk,
)

# Names an expression sees besides the execution's variables; variables may not use them.
RESERVED_NAMES = frozenset({"vars", "user", "now"})

# Each function and the forms it is called in: `f(x)` a global call with one
# argument, `x.f()` a call on a value with none.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "size": ("size(x)", "x.size()"),
    "int": ("int(x)",),
    "uint": ("uint(x)",),
    "double": ("double(x)",),
    "string": ("string(x)",),
    "bytes": ("bytes(x)",),
    "timestamp": ("timestamp(s)",),
    "duration": ("duration(s)",),
    "dyn": ("dyn(x)",),
    "type": ("type(x)",),
    "contains": ("s.contains(part)",),
    "startsWith": ("s.startsWith(prefix)",),
    "endsWith": ("s.endsWith(suffix)",),
    "matches": ("s.matches(re)",),
    **{
        getter: (f"t.{getter}()",)
        for getter in (
            "getFullYear",
            "getMonth",
            "getDayOfYear",
            "getDayOfMonth",
            "getDate",
            "getDayOfWeek",
            "getHours",
            "getMinutes",
            "getSeconds",
            "getMilliseconds",
        )
    },
}
MACROS: dict[str, tuple[str, ...]] = {
    "has": ("has(m.f)",),
    "all": ("l.all(x, p)",),
    "exists": ("l.exists(x, p)",),
    "exists_one": ("l.exists_one(x, p)",),
    "existsOne": ("l.existsOne(x, p)",),
    "map": ("l.map(x, f)", "l.map(x, p, f)"),
    "filter": ("l.filter(x, p)",),
}


def _signature(form: str) -> tuple[bool, int]:
    """(called on a value, number of arguments) of a form such as `s.matches(re)`."""
    head, _, args = form.partition("(")
    arguments = args.rstrip(")")
    return "." in head, len(arguments.split(",")) if arguments else 0


_SIGNATURES = {name: {_signature(form) for form in forms} for name, forms in FUNCTIONS.items()}


def problem(tree: Expr) -> str | None:
    """Why the expression may not be saved (the first reason found), or None."""
    for check in (_names, _functions, _shape_limits):
        found = check(tree)
        if found is not None:
            return found
    cost = nominal_estimate(tree, free_names(tree))
    if cost > STEP_BUDGET:
        return (
            f"would take about {cost:,} steps, over the budget of {STEP_BUDGET:,}"
            f" (each value it reads counted as a list of {NOMINAL_LENGTH})"
        )
    return None


def free_names(tree: Expr) -> set[str]:
    """The names the expression reads from its context (not a comprehension's variable)."""
    return {node.name for node in _free(tree) if isinstance(node, Ident)} - TYPE_NAMES


def _free(tree: Expr) -> Iterator[Expr]:
    """Every node but the names of comprehension variables where they are bound."""
    pending: list[tuple[Expr, frozenset[str]]] = [(tree, frozenset())]
    while pending:
        node, bound = pending.pop()
        if isinstance(node, Ident) and node.name in bound:
            continue
        yield node
        if isinstance(node, Comprehension):
            pending.append((node.range, bound))
            inner = bound | {node.variable}
            pending.extend((part, inner) for part in (node.predicate, node.transform) if part)
        else:
            pending.extend((child, bound) for child in children(node))


def _names(tree: Expr) -> str | None:
    for node in walk(tree):
        if isinstance(node, Ident) and node.leading_dot:
            return f"names .{node.name}: names do not start with a dot"
        if isinstance(node, Comprehension) and node.variable in RESERVED_NAMES:
            name = node.variable
            return f"names the variable of {node.macro}() {name}, which hides the {name} it sees"
        if isinstance(node, MessageLiteral):
            return f"builds a message ({node.type_name}{{...}}), which expressions cannot do"
    return None


def _functions(tree: Expr) -> str | None:
    calls = [node for node in _children_first(tree) if isinstance(node, Call)]
    known = _SIGNATURES.keys() | MACROS.keys()
    unknown = list(dict.fromkeys(c.function for c in calls if c.function not in known))
    if unknown:
        names = " and ".join(f"{name}()" for name in unknown)
        return (
            f"calls {names}, which expressions cannot call"
            " (docs/workflows.md lists the functions they can)"
        )
    for call in calls:
        # A macro's name in a call is a macro with the wrong arguments.
        signature = (call.target is not None, len(call.args))
        if call.function in MACROS or signature not in _SIGNATURES[call.function]:
            forms = MACROS.get(call.function) or FUNCTIONS[call.function]
            written = f"{'.' if call.target else ''}{call.function}()"
            arguments = _count(len(call.args), "argument")
            return f"calls {written} with {arguments}: write {' or '.join(forms)}"
    return None


def _children_first(tree: Expr) -> Iterator[Expr]:
    """Every node, after its sub-expressions: `f(x).g()` calls f first."""
    pending: list[tuple[Expr, bool]] = [(tree, False)]
    while pending:
        node, expanded = pending.pop()
        if expanded:
            yield node
        else:
            pending.append((node, True))
            pending.extend((child, False) for child in reversed(list(children(node))))


def _shape_limits(tree: Expr) -> str | None:
    nesting = comprehension_nesting(tree)
    if nesting > MAX_COMPREHENSION_NESTING:
        return (
            f"nests comprehensions (all, exists, map, filter...) {nesting} deep,"
            f" more than {MAX_COMPREHENSION_NESTING}"
        )
    elements = largest_literal(tree)
    if elements > MAX_LITERAL_ELEMENTS:
        return f"writes a list or map of {elements} elements, more than {MAX_LITERAL_ELEMENTS}"
    return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# ---------------------------------------------------------------- run-time failures

_MISSING = object()
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']*)'")
_UNSUPPORTED = re.compile(r"Unsupported operation: (\w+) (\S+) (\w+)")
_UNEXPECTED = re.compile(r"Unexpected type: got '([^']*)', want '([^']*)'")
_FUNCTION_ERROR = re.compile(r"Function '(\w+)' error: (.*?)(?:\. Check function arguments.*)?$")
_OUT_OF_BOUNDS = re.compile(r"index out of bounds: (-?\d+)")
_VERBS = {
    "+": "add",
    "-": "subtract",
    "*": "multiply",
    "/": "divide",
    "%": "take the remainder of",
}


def failure(tree: Expr, source: str, context: Mapping[str, Any], error: Exception) -> str:
    """A sentence saying why evaluating `tree` failed, naming what it read where possible."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError):
        return _missing_key(tree, source, context, text.strip("'\""))
    if isinstance(error, IndexError):
        return _out_of_range(tree, source, context, text)
    if isinstance(error, ZeroDivisionError):
        return "takes a remainder by zero" if "modulo" in text else "divides by zero"
    if isinstance(error, OverflowError) and "Function" not in text:
        return "an arithmetic result is outside the 64-bit integer range"
    for pattern, sentence in _SENTENCES:
        match = pattern.search(text)
        if match:
            return sentence(tree, source, context, match)
    if "No such overload" in text:
        return _wrong_types(tree, source, context)
    return text.split(". ")[0][:300]


def _undefined(tree: Expr, source: str, context: Mapping[str, Any], match: re.Match[str]) -> str:
    name = match.group(1)
    if name in FUNCTIONS:
        return f"{name}() does not take {_arguments_of(tree, source, context, name)}"
    return f"variable {name!r} is not set"


def _unsupported(tree: Expr, source: str, context: Mapping[str, Any], match: re.Match[str]) -> str:
    left, op, right = match.groups()
    verb = _VERBS.get(op, f"apply {op} to")
    return (
        f"cannot {verb} {with_article(left)} and {with_article(right)}: CEL does not convert"
        " between types (int(), double() and string() do)"
    )


def _unexpected(tree: Expr, source: str, context: Mapping[str, Any], match: re.Match[str]) -> str:
    got, wanted = match.groups()
    wanted_kinds = " or ".join(with_article(kind) for kind in wanted.split("|"))
    return f"got {with_article(got)} where it needs {wanted_kinds}"


def _function_error(
    tree: Expr, source: str, context: Mapping[str, Any], match: re.Match[str]
) -> str:
    name, detail = match.groups()
    return f"{name}() failed on its argument: {detail}"


_SENTENCES = (
    (_UNDEFINED, _undefined),
    (_UNSUPPORTED, _unsupported),
    (_UNEXPECTED, _unexpected),
    (_FUNCTION_ERROR, _function_error),
)


def _missing_key(tree: Expr, source: str, context: Mapping[str, Any], key: str) -> str:
    readers = [
        node
        for node in walk(tree)
        if (isinstance(node, Select) and node.field == key)
        or (isinstance(node, Index) and _literal(node.index) == key)
    ]
    for node in readers:
        container = resolve(node.operand, context)
        if isinstance(container, dict) and key not in container:
            return f"{render(node.operand, source)} has no key {key!r}"
    if readers:
        return f"{render(readers[0].operand, source)} has no key {key!r}"
    return f"a map has no key {key!r}"


def _out_of_range(tree: Expr, source: str, context: Mapping[str, Any], text: str) -> str:
    match = _OUT_OF_BOUNDS.search(text)
    position = int(match.group(1)) if match else None
    for node in walk(tree):
        if not isinstance(node, Index):
            continue
        container = resolve(node.operand, context)
        if isinstance(container, list) and resolve(node.index, context) == position:
            count = _count(len(container), "element")
            return f"{render(node.operand, source)} has no element {position} (it has {count})"
    return f"an index is out of range ({position})"


def _wrong_types(tree: Expr, source: str, context: Mapping[str, Any]) -> str:
    for node in walk(tree):
        if isinstance(node, Comprehension):
            found = _wrong_elements(node, source, context)
            if found is not None:
                return found
        if isinstance(node, Select):
            operand = resolve(node.operand, context)
            if operand is not _MISSING and not isinstance(operand, dict):
                what = render(node.operand, source)
                return f"{what} is {kind_of(operand)}, which has no field {node.field!r}"
        conditions = _conditions(node)
        for condition in conditions:
            value = resolve(condition, context)
            if value is not _MISSING and not isinstance(value, bool):
                return f"{render(condition, source)} is {kind_of(value)}, not a bool"
    return (
        "an operator or function got values of types it does not take"
        " (CEL does not convert between types)"
    )


def _wrong_elements(node: Comprehension, source: str, context: Mapping[str, Any]) -> str | None:
    """Elements of a comprehension's list that its body cannot use as it does."""
    collection = resolve(node.range, context)
    if not isinstance(collection, list | dict):
        return None
    where = f"an element of {render(node.range, source)}"
    for part in (node.predicate, node.transform):
        for inner in walk(part) if part is not None else ():
            if isinstance(inner, Select) and _names_variable(inner.operand, node):
                odd = next((e for e in collection if not isinstance(e, dict)), _MISSING)
                if odd is not _MISSING:
                    return f"{where} is {kind_of(odd)}, which has no field {inner.field!r}"
    if node.predicate is not None and _names_variable(node.predicate, node):
        odd = next((e for e in collection if not isinstance(e, bool)), _MISSING)
        if odd is not _MISSING:
            return f"{where} is {kind_of(odd)}, not a bool"
    return None


def _names_variable(node: Expr, comprehension: Comprehension) -> bool:
    return isinstance(node, Ident) and node.name == comprehension.variable


def _conditions(node: Expr) -> tuple[Expr, ...]:
    """The operands of `node` that must be bools."""
    if isinstance(node, Logical):
        return node.operands
    if isinstance(node, Unary) and node.op == "!":
        return (node.operand,)
    if isinstance(node, Conditional):
        return (node.condition,)
    return ()


def _arguments_of(tree: Expr, source: str, context: Mapping[str, Any], name: str) -> str:
    for node in walk(tree):
        if isinstance(node, Call) and node.function == name:
            values = [resolve(part, context) for part in (node.target, *node.args) if part]
            if values and all(value is not _MISSING for value in values):
                return " and ".join(kind_of(value) for value in values)
    return "these arguments"


def resolve(node: Expr, context: Mapping[str, Any]) -> Any:
    """The value a name, a field or an index of literal keys reads; _MISSING otherwise."""
    if isinstance(node, Ident):
        return context.get(node.name, _MISSING)
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Select | Index):
        container = resolve(node.operand, context)
        key = node.field if isinstance(node, Select) else resolve(node.index, context)
        if isinstance(container, dict) and isinstance(key, str | int | bool):
            return container.get(key, _MISSING)
        if isinstance(container, list) and type(key) is int and 0 <= key < len(container):
            return container[key]
    return _MISSING


def render(node: Expr, source: str) -> str:
    """How a name, field or index reads: `user.attributes`, `vars.items[0]`."""
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        return f"{render(node.operand, source)}.{node.field}"
    if isinstance(node, Index) and isinstance(node.index, Literal):
        return f"{render(node.operand, source)}[{node.index.value!r}]"
    start, end = node.span
    return source[start:end]


def _literal(node: Expr) -> Any:
    return node.value if isinstance(node, Literal) else _MISSING


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a bool"),
    (int, "an int"),
    (float, "a double"),
    (str, "a string"),
    (bytes, "bytes"),
    (list, "a list"),
    (dict, "a map"),
    (datetime, "a timestamp"),
    (timedelta, "a duration"),
)


def kind_of(value: Any) -> str:
    for kind, name in _KINDS:
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def with_article(noun: str) -> str:
    """'an int', 'a string', 'an ioSpecification'; 'bytes' and 'null' take none.
    Every message built from a kind or an element's name says it this way."""
    if noun in ("bytes", "null"):
        return noun
    return f"an {noun}" if noun[:1].lower() in tuple("aeiou") else f"a {noun}"
