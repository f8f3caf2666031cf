"""`regex` patterns: a small safe subset that RE2 (Python) and PostgreSQL's `~`
read the same way, and text folding for the case-insensitive operators.

The subset: literals; `.` (any character, newlines included in both engines);
`^` and `$` (start and end of the text); classes `[a-z0-9_]` and `[^...]` with
ASCII ranges; groups `(...)` and `(?:...)`; alternation `|`; quantifiers
`* + ?` and bounds `{n}`, `{n,}`, `{n,m}` up to 100. A metacharacter
(`.^$|?*+()[]{}\\`, and `-` in a class) is escaped with a backslash; no other
escape exists, so `\\d`, `\\w`, `\\b`, back references, look-around, flags and
POSIX classes (whose meaning differs between the engines or with the database
locale) are refused. Patterns are at most 256 characters and may not expand
beyond 1000 repeated atoms, so both engines stay fast.

Case-insensitive matching folds ASCII letters only, in both engines (SQL:
`lower(text COLLATE "C")`), whatever the database's collation: `ci` makes
"PRO" match "pro" but leaves "É" and "é" different.
"""

from __future__ import annotations

import string

import re2  # type: ignore[import-untyped]

MAX_PATTERN_LENGTH = 256
MAX_REPEAT = 100
MAX_EXPANSION = 1000
METACHARACTERS = frozenset(".^$|?*+()[]{}\\")
_CLASS_ESCAPES = frozenset("\\[]^-")
_QUANTIFIERS = frozenset("*+?{")

_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class PatternError(ValueError):
    """A pattern outside the subset; the message says where and why."""


def fold(text: str) -> str:
    """ASCII letters lowered, everything else as is (SQL: lower(text COLLATE "C"))."""
    return text.translate(_FOLD)


def check_pattern(pattern: str, *, ci: bool = False) -> str:
    """The pattern both engines run (folded when `ci`); PatternError if it is not in the subset."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"must be at most {MAX_PATTERN_LENGTH} characters")
    if ci:
        pattern = fold(pattern)
    if _Parser(pattern).parse() > MAX_EXPANSION:
        raise PatternError(f"repeats expand to more than {MAX_EXPANSION} atoms")
    return pattern


def compile_pattern(pattern: str) -> re2._Regexp:
    """A checked pattern, compiled for RE2 with `.` matching newlines as in PostgreSQL."""
    options = re2.Options()
    options.dot_nl = True
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        raise PatternError(str(error)) from error


class _Parser:
    """Recursive descent over the subset; each rule returns the number of atoms it expands to."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def fail(self, message: str) -> PatternError:
        return PatternError(f"{message} at position {self.at}")

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def parse(self) -> int:
        size = self.alternation()
        if self.at < len(self.text):
            raise self.fail(f"unbalanced {self.peek()!r}")
        return size

    def alternation(self) -> int:
        size = self.sequence()
        while self.peek() == "|":
            self.at += 1
            size += self.sequence()
        return size

    def sequence(self) -> int:
        size = 0
        start = self.at
        while self.peek() not in ("", "|", ")"):
            size += self.repetition()
        if self.at == start:
            raise self.fail("empty alternative or group")
        return size

    def repetition(self) -> int:
        size, repeatable = self.atom()
        if self.peek() not in _QUANTIFIERS:
            return size
        if not repeatable:
            raise self.fail("an anchor cannot be repeated")
        factor = self.bound() if self.peek() == "{" else self.quantifier()
        if self.peek() in _QUANTIFIERS:
            raise self.fail("a quantifier cannot follow another")
        return size * factor

    def quantifier(self) -> int:
        self.at += 1
        return 1

    def bound(self) -> int:
        self.at += 1
        low = self.integer()
        high = low
        if self.peek() == ",":
            self.at += 1
            high = self.integer() if self.peek() != "}" else low
            if high < low:
                raise self.fail("a bound's maximum is below its minimum")
        if self.peek() != "}":
            raise self.fail("a bound is {n}, {n,} or {n,m}")
        self.at += 1
        return max(high, 1)

    def integer(self) -> int:
        start = self.at
        while self.peek().isascii() and self.peek().isdigit():
            self.at += 1
        if start == self.at:
            raise self.fail("a bound needs a number")
        value = int(self.text[start : self.at])
        if value > MAX_REPEAT:
            raise self.fail(f"bounds are at most {MAX_REPEAT}")
        return value

    def atom(self) -> tuple[int, bool]:
        char = self.peek()
        self.at += 1
        if char == "(":
            if self.text.startswith("?:", self.at):
                self.at += 2
            elif self.peek() == "?":
                raise self.fail("only (?:...) groups are supported")
            size = self.alternation()
            if self.peek() != ")":
                raise self.fail("unclosed group")
            self.at += 1
            return size, True
        if char in ("^", "$"):
            return 1, False
        if char == "[":
            self.char_class()
            return 1, True
        if char == "\\":
            escaped = self.peek()
            if escaped not in METACHARACTERS:
                raise self.fail("only metacharacters can be escaped (no \\d, \\w, ...)")
            self.at += 1
            return 1, True
        if char in _QUANTIFIERS:
            raise self.fail("nothing to repeat")
        if char in ("]", "}"):
            raise self.fail(f"{char!r} must be escaped")
        if char == "\x00":
            raise self.fail("NUL characters are not allowed")
        return 1, True

    def char_class(self) -> None:
        if self.peek() == "^":
            self.at += 1
        start = self.at
        while self.peek() != "]":
            if self.peek() == "":
                raise self.fail("unclosed class")
            low = self.class_char()
            if self.peek() == "-":
                self.at += 1
                high = self.class_char()
                if not (low.isascii() and high.isascii()) or low > high:
                    raise self.fail("a range joins two ASCII characters in order")
        if self.at == start:
            raise self.fail("empty class")
        self.at += 1

    def class_char(self) -> str:
        char = self.peek()
        self.at += 1
        if char == "\\":
            escaped = self.peek()
            if escaped not in _CLASS_ESCAPES:
                raise self.fail("in a class only \\ [ ] ^ - can be escaped")
            self.at += 1
            return escaped
        if char in _CLASS_ESCAPES or char == "":
            raise self.fail(f"{char!r} must be escaped in a class")
        if char == "\x00":
            raise self.fail("NUL characters are not allowed")
        return char
