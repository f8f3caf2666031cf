"""The CEL parser used to analyse expressions agrees with the CEL library: on
generated expressions it accepts what the library accepts, reads the same
names and functions, and groups operators as the library does (the
expression rebuilt from its tree, fully parenthesized, evaluates to the same
value)."""

from __future__ import annotations

from typing import Any

import cel
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.workflows.cel_syntax import (
    Binary,
    Call,
    CelSyntaxError,
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
    depth,
    parse,
    walk,
)


def text(node: Expr) -> str:
    """The node as CEL source, every operand in parentheses."""
    match node:
        case Literal(value=value, kind=kind):
            return literal_text(value, kind)
        case Ident(name=name):
            return name
        case Select(operand=operand, field=field):
            return f"({text(operand)}).{field}"
        case Index(operand=operand, index=index):
            return f"({text(operand)})[{text(index)}]"
        case Call(function=function, target=target, args=args):
            arguments = ", ".join(text(arg) for arg in args)
            head = f"({text(target)})." if target is not None else ""
            return f"{head}{function}({arguments})"
        case Unary(op=op, operand=operand):
            return f"{op}({text(operand)})"
        case Binary(op=op, left=left, right=right):
            return f"({text(left)}) {op} ({text(right)})"
        case Logical(op=op, operands=operands):
            return f" {op} ".join(f"({text(operand)})" for operand in operands)
        case Conditional(condition=condition, then=then, otherwise=otherwise):
            return f"({text(condition)}) ? ({text(then)}) : ({text(otherwise)})"
        case Has(select=select):
            return f"has({text(select)})"
        case Comprehension(macro=macro, range=range_, variable=variable):
            parts = [p for p in (node.predicate, node.transform) if p is not None]
            body = ", ".join(text(part) for part in parts)
            return f"({text(range_)}).{macro}({variable}, {body})"
        case ListLiteral(elements=elements):
            return "[" + ", ".join(text(e) for e in elements) + "]"
        case MapLiteral(entries=entries):
            return "{" + ", ".join(f"{text(k)}: {text(v)}" for k, v in entries) + "}"
        case MessageLiteral(type_name=type_name, fields=fields):
            return type_name + "{" + ", ".join(f"{n}: {text(v)}" for n, v in fields) + "}"
    raise AssertionError(node)


def literal_text(value: Any, kind: str) -> str:
    if kind == "string":
        return '"' + "".join(f"\\U{ord(c):08x}" for c in value) + '"'
    if kind == "bytes":
        return 'b"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if kind in ("bool", "null"):
        return {True: "true", False: "false", None: "null"}[value]
    suffix = "u" if kind == "uint" else ""
    return f"({value!r}{suffix})"


# ---------------------------------------------------------------- generated expressions

CHARACTERS = st.characters(codec="utf-8", exclude_categories=["Cs"])


def quoted(content: str, style: int) -> str:
    """`content` as a CEL string literal in one of several spellings."""
    if style == 0 and not any(c in content for c in "'\n\r\\"):
        return f"r'{content}'"
    if style == 1 and not any(c in content for c in '\\"') and not content.endswith('"'):
        return f'"""{content}"""'
    escapes = {"\n": "\\n", "\\": "\\\\", '"': '\\"', "\t": "\\t", "'": "\\'"}
    spelled = []
    for index, char in enumerate(content):
        if char in escapes:
            spelled.append(escapes[char])
        elif ord(char) < 256 and index % 3 == 1:
            spelled.append(f"\\{ord(char):03o}" if ord(char) < 0o400 else char)
        elif ord(char) < 0x10000 and index % 3 == 2:
            spelled.append(f"\\u{ord(char):04x}")
        else:
            spelled.append(char)
    return '"' + "".join(spelled) + '"'


STRINGS = st.builds(quoted, st.text(CHARACTERS, max_size=6), st.integers(0, 2))
NUMBERS = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(0, 10**6).map(hex),
    st.integers(0, 10**6).map(lambda n: f"{n}u"),
    st.sampled_from(["1.5", "0.25", "2e3", ".5", "1.5e-2", "3.0"]),
)
CLOSED_ATOMS = st.one_of(
    NUMBERS,
    STRINGS,
    STRINGS.map(lambda s: "b" + s),
    st.sampled_from(["true", "false", "null", "[]", "{}", "[,]"]),
)
BINARY = ["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "in", "&&", "||"]


def compound(parts: st.SearchStrategy[str], names: list[str]) -> st.SearchStrategy[str]:
    """Expressions built from `parts`, written with no more parentheses than the grammar needs
    (and some it does not), comprehension variables drawn from `names`."""
    variable = st.sampled_from(names)
    return st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", parts, st.sampled_from(BINARY), parts),
        st.builds(lambda a, b, c: f"{a} ? {b} : ({c})", parts, parts, parts),
        st.builds(lambda op, a: f"{op}{a}", st.sampled_from(["!", "-", "--", "!!"]), parts),
        parts.map(lambda a: f"({a})"),
        st.lists(parts, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(parts, parts), max_size=2).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"
        ),
        st.builds(lambda a, b: f"[{a}][{b}]", parts, parts),
        st.builds(lambda a: f"size({a})", parts),
        st.builds(lambda a: f"{{'f': {a}}}.f", parts),
        st.builds(lambda a: f"has({{'f': {a}}}.f)", parts),
        st.builds(
            lambda xs, macro, v, body: f"[{', '.join(xs)}].{macro}({v}, {body})",
            st.lists(parts, max_size=3),
            st.sampled_from(["all", "exists", "exists_one", "map", "filter"]),
            variable,
            parts,
        ),
        st.builds(
            lambda xs, v, p, f: f"[{', '.join(xs)}].map({v}, {p}, {f})",
            st.lists(parts, max_size=2),
            variable,
            parts,
            parts,
        ),
        st.builds(
            lambda a, f, b: f"({a}).{f}({b})",
            parts,
            st.sampled_from(["contains", "startsWith", "matches"]),
            parts,
        ),
    )


# Two atoms for each compound keep the expressions small.
CLOSED: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(CLOSED_ATOMS, CLOSED_ATOMS, compound(CLOSED, ["x", "y"]))
)
# Integers and bools only, so that most evaluate and a wrong grouping shows in the value.
ARITHMETIC: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        st.integers(-9, 9).map(str),
        st.sampled_from(["true", "false"]),
        st.builds(
            lambda a, op, b: f"{a} {op} {b}",
            ARITHMETIC,
            st.sampled_from(["+", "-", "*", "/", "%", "==", "<", "&&", "||"]),
            ARITHMETIC,
        ),
        st.builds(lambda a, b, c: f"{a} ? {b} : {c}", ARITHMETIC, ARITHMETIC, ARITHMETIC),
        st.builds(lambda op, a: f"{op}{a}", st.sampled_from(["!", "-", "--"]), ARITHMETIC),
        ARITHMETIC.map(lambda a: f"({a})"),
    )
)
OPEN_ATOMS = st.one_of(
    CLOSED_ATOMS, st.sampled_from(["a", "b", "a.b", "a[0]", "f(a)", "a.g(b, 1)"])
)
OPEN: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(OPEN_ATOMS, OPEN_ATOMS, compound(OPEN, ["x", "y", "a"]))
)


def outcome(source: str) -> tuple[str, Any]:
    try:
        return "value", comparable(cel.evaluate(source, {}))
    except Exception as error:
        return "error", type(error).__name__


def comparable(value: Any) -> Any:
    """The value with NaN made equal to itself."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [comparable(item) for item in value]
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    return value


def accepted_by_cel(source: str) -> bool:
    try:
        cel.compile(source)
    except (ValueError, RuntimeError):
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(st.one_of(CLOSED, ARITHMETIC))
def test_operators_group_as_the_library_groups_them(source: str) -> None:
    assume(accepted_by_cel(source))
    rebuilt = text(parse(source))
    assert accepted_by_cel(rebuilt), rebuilt
    assert outcome(rebuilt) == outcome(source), rebuilt


@settings(max_examples=300, deadline=None)
@given(OPEN)
def test_names_and_functions_are_those_the_library_reads(source: str) -> None:
    assume(accepted_by_cel(source))
    program, tree = cel.compile(source), parse(source)
    names = {n.name for n in walk(tree) if isinstance(n, Ident)}
    # The library's expansion of filter reads its variable (`@result + [x]`).
    names |= {
        n.variable for n in walk(tree) if isinstance(n, Comprehension) and n.macro == "filter"
    }
    functions = {n.function for n in walk(tree) if isinstance(n, Call)}
    assert names == set(program.variables())
    assert functions == {f for f in program.functions() if f.isidentifier()}


@settings(max_examples=300, deadline=None)
@given(OPEN, st.integers(0, 10**6), st.sampled_from(list("()[]{}.,:?!-+'\"\\ au0_`r")))
def test_what_the_library_accepts_after_an_edit_the_parser_reads(
    source: str, where: int, char: str
) -> None:
    at = where % (len(source) + 1)
    for edited in (source[:at] + char + source[at:], source[:at] + source[at + 1 :]):
        if accepted_by_cel(edited):
            parse(edited)


@settings(max_examples=200, deadline=None)
@given(st.one_of(NUMBERS, STRINGS, STRINGS.map(lambda s: "b" + s)))
def test_literals_read_as_the_library_reads_them(source: str) -> None:
    assume(accepted_by_cel(source))
    literal = parse(source)
    assert isinstance(literal, Literal)
    assert literal.value == cel.evaluate(source, {})


# ---------------------------------------------------------------- particular cases


@pytest.mark.parametrize(
    ("source", "rebuilt"),
    [
        ("a + b * c", "(a) + ((b) * (c))"),
        ("a - b - c", "((a) - (b)) - (c)"),
        ("a < b == c", "((a) < (b)) == (c)"),
        ("a || b && c", "(a) || ((b) && (c))"),
        ("a ? b : c ? d : e", "(a) ? (b) : ((c) ? (d) : (e))"),
        ("!a.b", "!((a).b)"),
        ("-1", "(-1)"),
        ("--1", "(1)"),
        ("---a", "-(a)"),
        ("!!a", "a"),
        ("- 1.5", "(-1.5)"),
        ("a.b.c(d)[0]", "(((a).b).c(d))[(0)]"),
        ("x in [1, 2,]", "(x) in ([(1), (2)])"),
        ("{'a': 1,}", '{"\\U00000061": (1)}'),
        ("[,]", "[]"),
        ("has(a.b)", "has((a).b)"),
        ("l.existsOne(x, x)", "(l).exists_one(x, x)"),
        ("l.map(x, x > 1, x * 2)", "(l).map(x, (x) > ((1)), (x) * ((2)))"),
        ("l.all(x)", "(l).all(x)"),
        ("a.b.C{f: 1}", "a.b.C{f: (1)}"),
    ],
)
def test_the_tree_of_an_expression(source: str, rebuilt: str) -> None:
    assert text(parse(source)) == rebuilt


def test_strings_and_bytes_in_every_spelling() -> None:
    cases = {
        r"'\x41\101\u0041\U00000041\?\`'": "AAAA?`",
        r"r'\n'": "\\n",
        "'''a\nb'c'''": "a\nb'c",
        r'"""\""""': '"',
        r"b'\xff\377é'": b"\xff\xff\xc3\xa9",
        r"BR'\x'": b"\\x",
    }
    for source, value in cases.items():
        literal = parse(source)
        assert isinstance(literal, Literal) and literal.value == value, source
        assert cel.evaluate(source) == value


@pytest.mark.parametrize(
    "source", ["has(a)", "l.map(1, x)", "a +", "(a", "'unterminated", "a.1", "f(1,)", "!-a"]
)
def test_what_is_not_cel_is_refused(source: str) -> None:
    with pytest.raises(CelSyntaxError):
        parse(source)


def test_what_the_library_nests_deepest_is_read_without_exhausting_the_stack() -> None:
    for source in ("(" * 95 + "1" + ")" * 95, "size(" * 95 + "1" + ")" * 95, "a" + ".b" * 2000):
        assert accepted_by_cel(source)
        parse(source)
    chain = parse(" + ".join(["a"] * 2000))
    assert depth(chain) == 2000
    assert isinstance(parse(" && ".join(["a"] * 2000)), Logical)


def test_each_node_knows_where_it_is() -> None:
    source = "size(vars.items.map(x, x.price)) > (limit)"
    spans = {source[n.span[0] : n.span[1]] for n in walk(parse(source))}
    assert {"vars.items", "x.price", "(limit)", "vars.items.map(x, x.price)"} <= spans


def test_a_root_scoped_name_in_a_macro_is_a_call_not_a_variable() -> None:
    """Found by the edit test: `[].all(.x, 0)` is valid CEL syntax that declares no
    variable; it reads as a call of `all`, which the checks then refuse by name."""
    tree = parse("[].all(.x, 0)")
    assert isinstance(tree, Call) and tree.function == "all"
