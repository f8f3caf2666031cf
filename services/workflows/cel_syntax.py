"""A CEL parser for analysing expressions, not for running them.

The CEL library compiles and runs expressions but shows nothing of their
syntax tree, and the checks made when a workflow is saved (which functions an
expression calls, which names it reads, how its comprehensions nest) and the
cost estimated before each evaluation need one. This is a recursive descent
over the grammar of the CEL specification (cel-spec's CEL.g4), with the
macros (`has`, `all`, `exists`, `exists_one`, `map`, `filter`) expanded into
comprehension nodes as the library expands them. Callers compile with the
library first: it decides what is valid CEL, and this parser only has to
agree with it on what it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

# The deepest tree the analyses of an expression walk (they recurse once per
# level). The CEL library refuses more than about 95 nested brackets or calls,
# which this parser reads in a few frames each, but lets chains of operators
# (`a + b + ...`) grow as long as the source allows, so deeper trees exist.
MAX_SYNTAX_DEPTH = 100


class CelSyntaxError(ValueError):
    """Source this parser cannot read (the CEL library refused it first, as a rule)."""


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    kind: str  # int, uint, double, string, bytes, bool or null
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    span: tuple[int, int]
    leading_dot: bool = False


@dataclass(frozen=True, slots=True)
class Select:
    operand: Expr
    field: str
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Index:
    operand: Expr
    index: Expr
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Call:
    """A function, called as `f(args)` or, on a target, as `target.f(args)`."""

    function: str
    target: Expr | None
    args: tuple[Expr, ...]
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # ! or -
    operand: Expr
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # arithmetic, a comparison or `in`
    left: Expr
    right: Expr
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Logical:
    """A chain of `&&` or of `||`, kept flat so that long chains stay shallow."""

    op: str
    operands: tuple[Expr, ...]
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Conditional:
    condition: Expr
    then: Expr
    otherwise: Expr
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Has:
    select: Select
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Comprehension:
    """A macro over a list (its elements) or a map (its keys): `range.macro(variable, ...)`."""

    macro: str  # all, exists, exists_one, map or filter
    range: Expr
    variable: str
    predicate: Expr | None  # all, exists, exists_one, filter and map's optional filter
    transform: Expr | None  # map
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ListLiteral:
    elements: tuple[Expr, ...]
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class MapLiteral:
    entries: tuple[tuple[Expr, Expr], ...]
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class MessageLiteral:
    type_name: str
    fields: tuple[tuple[str, Expr], ...]
    span: tuple[int, int]


Expr = (
    Literal
    | Ident
    | Select
    | Index
    | Call
    | Unary
    | Binary
    | Logical
    | Conditional
    | Has
    | Comprehension
    | ListLiteral
    | MapLiteral
    | MessageLiteral
)


def children(node: Expr) -> Iterator[Expr]:
    """The node's direct sub-expressions, in the order the source has them."""
    match node:
        case Select(operand=operand) | Unary(operand=operand):
            yield operand
        case Index(operand=operand, index=index):
            yield from (operand, index)
        case Call(target=target, args=args):
            if target is not None:
                yield target
            yield from args
        case Binary(left=left, right=right):
            yield from (left, right)
        case Logical(operands=operands) | ListLiteral(elements=operands):
            yield from operands
        case Conditional(condition=condition, then=then, otherwise=otherwise):
            yield from (condition, then, otherwise)
        case Has(select=select):
            yield select
        case Comprehension(range=range_, predicate=predicate, transform=transform):
            yield range_
            yield from (part for part in (predicate, transform) if part is not None)
        case MapLiteral(entries=entries):
            for key, value in entries:
                yield from (key, value)
        case MessageLiteral(fields=fields):
            yield from (value for _, value in fields)


def walk(node: Expr) -> Iterator[Expr]:
    """Every node of the tree, parents before children (without recursion)."""
    pending = [node]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(reversed(list(children(current))))


def depth(node: Expr) -> int:
    """Levels of the tree (without recursion, so that any tree can be measured)."""
    deepest, pending = 0, [(node, 1)]
    while pending:
        current, level = pending.pop()
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children(current))
    return deepest


def parse(source: str) -> Expr:
    return _Parser(source).parse()


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # int, uint, double, string, bytes, ident, eof, or the text of a keyword or symbol
    text: str
    start: int
    end: int
    value: Any = None


_SPACE = re.compile(r"(?:[ \t\r\n\f]+|//[^\n]*)+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPONENT = r"(?:[eE][+-]?[0-9]+)"
_NUMBERS = (
    # ANTLR takes the longest match, and the first rule of equally long ones.
    ("double", re.compile(rf"[0-9]+\.[0-9]+{_EXPONENT}?|[0-9]+{_EXPONENT}|\.[0-9]+{_EXPONENT}?")),
    ("int", re.compile(r"0x[0-9a-fA-F]+|[0-9]+")),
    ("uint", re.compile(r"(?:0x[0-9a-fA-F]+|[0-9]+)[uU]")),
)
_SYMBOLS = sorted(
    [
        "==",
        "!=",
        "<=",
        ">=",
        "&&",
        "||",
        "<",
        ">",
        "+",
        "-",
        "*",
        "/",
        "%",
        "!",
        "?",
        ":",
        ".",
        ",",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
    ],
    key=len,
    reverse=True,
)
_KEYWORDS = frozenset({"true", "false", "null", "in"})
_STRING_PREFIX = re.compile(r"(?:[bB][rR]?|[rR])?(?='|\")")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    '"': '"',
    "'": "'",
    "\\": "\\",
    "?": "?",
    "`": "`",
}
_ESCAPE = re.compile(
    r"\\(?:[abfnrtv\"'\\?`]|[xX][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-3][0-7]{2})"
)


def _tokens(source: str) -> list[_Token]:
    tokens, at = [], 0
    while True:
        space = _SPACE.match(source, at)
        at = space.end() if space else at
        if at == len(source):
            tokens.append(_Token("eof", "", at, at))
            return tokens
        token = _number(source, at) or _string(source, at) or _word(source, at)
        if token is None:
            token = _symbol(source, at)
        tokens.append(token)
        at = token.end


def _number(source: str, at: int) -> _Token | None:
    best: tuple[str, re.Match[str]] | None = None
    for kind, pattern in _NUMBERS:
        match = pattern.match(source, at)
        if match and (best is None or match.end() > best[1].end()):
            best = (kind, match)
    if best is None:
        return None
    kind, match = best
    text = match.group()
    digits = text.rstrip("uU")
    value = float(text) if kind == "double" else int(digits, 16 if digits[:2] == "0x" else 10)
    return _Token(kind, text, at, match.end(), value)


def _word(source: str, at: int) -> _Token | None:
    match = _IDENT.match(source, at)
    if match is None:
        return None
    text = match.group()
    return _Token(text if text in _KEYWORDS else "ident", text, at, match.end(), text)


def _symbol(source: str, at: int) -> _Token:
    for symbol in _SYMBOLS:
        if source.startswith(symbol, at):
            return _Token(symbol, symbol, at, at + len(symbol))
    raise CelSyntaxError(f"unexpected character {source[at]!r} at {at}")


def _string(source: str, at: int) -> _Token | None:
    prefix = _STRING_PREFIX.match(source, at)
    if prefix is None:
        return None
    flags = prefix.group().lower()
    begin = prefix.end()
    quote = source[begin] * 3 if source.startswith(source[begin] * 3, begin) else source[begin]
    body_start = begin + len(quote)
    end = _closing(source, body_start, quote, raw="r" in flags)
    body = source[body_start:end]
    if len(quote) == 3:
        # Line breaks in a triple-quoted literal read as \n, as the CEL library reads them.
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    data = _decoded(body, raw="r" in flags, as_bytes="b" in flags)
    kind, value = ("bytes", data) if "b" in flags else ("string", data.decode("utf-8", "replace"))
    return _Token(kind, source[at : end + len(quote)], at, end + len(quote), value)


def _closing(source: str, at: int, quote: str, *, raw: bool) -> int:
    """Where the string's closing quote starts."""
    while at < len(source):
        if source.startswith(quote, at):
            return at
        if source[at] in "\r\n" and len(quote) == 1:
            break
        if source[at] == "\\" and not raw:
            escape = _ESCAPE.match(source, at)
            if escape is None:
                break
            at = escape.end()
        else:
            at += 1
    raise CelSyntaxError(f"unterminated or malformed string at {at}")


def _decoded(body: str, *, raw: bool, as_bytes: bool) -> bytes:
    """The literal's content as UTF-8 (a bytes literal's \\x and octal escapes are single bytes)."""
    if raw:
        return body.encode("utf-8", "surrogatepass")
    chunks, last = [], 0
    for escape in _ESCAPE.finditer(body):
        chunks.append(body[last : escape.start()].encode("utf-8", "surrogatepass"))
        chunks.append(_escaped(escape.group()[1:], as_bytes=as_bytes))
        last = escape.end()
    chunks.append(body[last:].encode("utf-8", "surrogatepass"))
    return b"".join(chunks)


def _escaped(text: str, *, as_bytes: bool) -> bytes:
    if text in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[text].encode()
    code = int(text[1:], 16) if text[0] in "xXuU" else int(text, 8)
    if as_bytes and text[0] not in "uU":
        return bytes([code])
    if code > 0x10FFFF:
        raise CelSyntaxError(f"\\{text} is not a character")
    return chr(code).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- grammar

# Binary operators by precedence, all left-associative.
_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    **dict.fromkeys(("<", "<=", ">=", ">", "==", "!=", "in"), 3),
    **dict.fromkeys(("+", "-"), 4),
    **dict.fromkeys(("*", "/", "%"), 5),
}
_MACRO_ARITY = {
    "all": (2,),
    "exists": (2,),
    "exists_one": (2,),
    "existsOne": (2,),
    "map": (2, 3),
    "filter": (2,),
}


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.at = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.at]

    def take(self, kind: str | None = None) -> _Token:
        token = self.token
        if kind is not None and token.kind != kind:
            found = token.text or "the end"
            raise CelSyntaxError(f"expected {kind!r} at {token.start}, found {found!r}")
        self.at += 1
        return token

    def accept(self, kind: str) -> bool:
        if self.token.kind == kind:
            self.at += 1
            return True
        return False

    def parse(self) -> Expr:
        tree = self.expr()
        self.take("eof")
        return tree

    def expr(self) -> Expr:
        condition = self.binary(1)
        if not self.accept("?"):
            return condition
        then = self.binary(1)
        self.take(":")
        otherwise = self.expr()
        return Conditional(condition, then, otherwise, (condition.span[0], otherwise.span[1]))

    def binary(self, lowest: int) -> Expr:
        """Operators of precedence `lowest` and above, by precedence climbing: a chain
        is built in a loop, and only a tighter operator on the right recurses."""
        left = self.unary()
        while _PRECEDENCE.get(self.token.kind, 0) >= lowest:
            op = self.take().kind
            right = self.binary(_PRECEDENCE[op] + 1)
            span = (left.span[0], right.span[1])
            if op in ("&&", "||"):
                chain = left.operands if isinstance(left, Logical) and left.op == op else (left,)
                left = Logical(op, (*chain, right), span)
            else:
                left = Binary(op, left, right, span)
        return left

    def unary(self) -> Expr:
        start = self.token.start
        ops: list[str] = []
        while self.token.kind in ("!", "-") and (not ops or self.token.kind == ops[0]):
            if not ops and self.signed_number():
                break
            ops.append(self.take().kind)
        node = self.postfix(self.primary())
        # As the CEL parsers do, `!!a` is `a` and `--a` is `a`.
        if len(ops) % 2:
            node = Unary(ops[0], node, (start, node.span[1]))
        return node

    def signed_number(self) -> bool:
        """Whether a minus and a number come next: the grammar reads them as one literal."""
        return self.token.kind == "-" and self.tokens[self.at + 1].kind in ("int", "double")

    def postfix(self, node: Expr) -> Expr:
        start = node.span[0]
        while True:
            if self.accept("."):
                name = self.take("ident")
                if self.accept("("):
                    args = self.arguments()
                    node = self.call(name.text, node, args, (start, self.take(")").end))
                else:
                    node = Select(node, name.text, (start, name.end))
            elif self.accept("["):
                index = self.expr()
                node = Index(node, index, (start, self.take("]").end))
            else:
                return node

    def primary(self) -> Expr:
        token = self.token
        if token.kind in ("ident", "."):
            return self.named()
        if self.signed_number():
            self.take()
            number = self.take()
            return Literal(-number.value, number.kind, (token.start, number.end))
        self.take()
        if token.kind == "(":
            inner = self.expr()
            return replace(inner, span=(token.start, self.take(")").end))
        if token.kind == "[":
            elements = self.sequence("]", self.expr)
            return ListLiteral(tuple(elements), (token.start, self.take("]").end))
        if token.kind == "{":
            entries = self.sequence("}", self.entry)
            return MapLiteral(tuple(entries), (token.start, self.take("}").end))
        return self.literal(token)

    def literal(self, token: _Token) -> Literal:
        span = (token.start, token.end)
        if token.kind in ("int", "uint", "double", "string", "bytes"):
            return Literal(token.value, token.kind, span)
        if token.kind in ("true", "false"):
            return Literal(token.kind == "true", "bool", span)
        if token.kind == "null":
            return Literal(None, "null", span)
        found = token.text or "the end"
        raise CelSyntaxError(f"expected an operand at {token.start}, found {found!r}")

    def named(self) -> Expr:
        """An identifier, a global call, or a message literal `a.b.Name{field: value}`."""
        start = self.token.start
        leading_dot = self.accept(".")
        name = self.take("ident")
        if self.accept("("):
            args = self.arguments()
            return self.call(name.text, None, args, (start, self.take(")").end), leading_dot)
        qualified = self.qualified_name()
        if qualified is not None:
            names, self.at = qualified
            fields = self.sequence("}", self.field)
            type_name = ".".join([name.text, *names])
            return MessageLiteral(type_name, tuple(fields), (start, self.take("}").end))
        return Ident(name.text, (start, name.end), leading_dot)

    def qualified_name(self) -> tuple[list[str], int] | None:
        """The rest of a dotted name followed by '{', and where its '{' ends; else None."""
        names, at = [], self.at
        while self.tokens[at].kind == "." and self.tokens[at + 1].kind == "ident":
            names.append(self.tokens[at + 1].text)
            at += 2
        return (names, at + 1) if self.tokens[at].kind == "{" else None

    def field(self) -> tuple[str, Expr]:
        name = self.take("ident").text
        self.take(":")
        return name, self.expr()

    def entry(self) -> tuple[Expr, Expr]:
        key = self.expr()
        self.take(":")
        return key, self.expr()

    def sequence(self, closing: str, item: Any) -> list[Any]:
        """Items up to `closing`, separated by commas, a trailing comma allowed
        (and, as the grammar has it, a lone comma: `[,]` is an empty list)."""
        items: list[Any] = []
        if self.token.kind == "," and self.tokens[self.at + 1].kind == closing:
            self.at += 1
            return items
        while self.token.kind != closing:
            items.append(item())
            if not self.accept(","):
                break
        return items

    def arguments(self) -> list[Expr]:
        if self.token.kind == ")":
            return []
        args = [self.expr()]
        while self.accept(","):
            args.append(self.expr())
        return args

    def call(
        self,
        function: str,
        target: Expr | None,
        args: list[Expr],
        span: tuple[int, int],
        leading_dot: bool = False,
    ) -> Expr:
        """A call, or the macro it spells."""
        if function == "has" and target is None and len(args) == 1 and not leading_dot:
            if not isinstance(args[0], Select):
                raise CelSyntaxError(f"has() at {span[0]} needs a field selection, as has(a.b)")
            return Has(args[0], span)
        if target is None or len(args) not in _MACRO_ARITY.get(function, ()):
            return Call(("." if leading_dot else "") + function, target, tuple(args), span)
        variable = args[0]
        if isinstance(variable, Ident) and variable.leading_dot:
            # `.x` is x of the root scope, not a new variable: a call, not the macro.
            return Call(function, target, tuple(args), span)
        if not isinstance(variable, Ident):
            raise CelSyntaxError(f"the variable of {function}() at {span[0]} must be a name")
        macro = "exists_one" if function == "existsOne" else function
        predicate = args[1] if macro != "map" or len(args) == 3 else None
        transform = args[-1] if macro == "map" else None
        return Comprehension(macro, target, variable.name, predicate, transform, span)
