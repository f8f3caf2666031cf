"""Hypothesis strategies: conditions of the whole language (user leaves) and
users whose attributes are full of what breaks evaluators: missing keys,
nulls, wrong types (numbers as strings, booleans beside 1), case variants,
LIKE's `%` and `_`, backslashes, non-ASCII letters, nested arrays, arrays
and objects where scalars are expected, timestamps in and out of the accepted
form, exactly on the edges of windows.

Conditions and documents draw from the same small pools of values, so that
they meet often: a rare coincidence is one no test would ever see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from conditions.model import OPERATORS, Kind
from conditions.patterns import METACHARACTERS
from runtime.stages import STAGES
from tests.segments.engines import StoredUser, Transition

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
PATHS = ["a", "b", "n", "t", "o.a", "o.x.y"]


def _often(pool: list[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the pool four times in five, else anything `other` draws."""
    return st.integers(0, 4).flatmap(lambda pick: other if pick == 0 else st.sampled_from(pool))


_ALPHABET = "abAB%_\\.-@éÉ\n "
TEXTS = _often(
    ["", "a", "A", "ab", "aB", "AB", "b%", "%", "_a", "_", "é", "É", "a\\b", "\\", "a\nb", "30"],
    st.text(alphabet=_ALPHABET, max_size=6),
)
NEEDLES = _often(
    ["a", "A", "b", "B", "%", "_", "é", "\\", "ab", "aB", "\n", "3"],
    st.text(alphabet=_ALPHABET, min_size=1, max_size=3),
)
NUMBERS = _often(
    [0, 1, -1, 3, 3.0, 29.99, 30, 30.5, -1.5, 2**53 + 1, 2**60, 1e20, 1.5e-7, 0.1],
    st.one_of(
        st.integers(-(2**53) + 1, 2**53 - 1),
        st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False),
    ),
)
DURATIONS = st.sampled_from(["PT1S", "PT1H", "PT12H", "P1D", "P2W", "P14D", "PT90.5S"])
# Moments on the edges of those durations before AS_OF, and a few after it.
_EDGES = [
    timedelta(0),
    timedelta(seconds=1),
    timedelta(seconds=90.5),
    timedelta(hours=1),
    timedelta(hours=12),
    timedelta(days=1),
    timedelta(days=14),
    timedelta(days=14, microseconds=1),
    timedelta(days=30),
    timedelta(days=-1),
    timedelta(seconds=-1),
]
MOMENTS = _often(
    [AS_OF - edge for edge in _EDGES],
    st.integers(-40 * 86400, 10 * 86400).map(lambda s: AS_OF + timedelta(seconds=s)),
)


def _format(moment: datetime, form: int) -> str:
    if form == 0 or (form == 1 and moment.time() != datetime.min.time()):
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if form == 1:
        return moment.strftime("%Y-%m-%d")
    if form == 2:
        shifted = moment + timedelta(hours=5, minutes=30)
        return shifted.strftime("%Y-%m-%dT%H:%M:%S.%f+05:30")
    if form == 3:
        shifted = moment - timedelta(hours=3)
        return shifted.strftime("%Y-%m-%dT%H:%M:%S-03:00")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


TIMESTAMPS = st.builds(_format, MOMENTS, st.integers(0, 3))
STAMPISH = st.one_of(
    st.builds(_format, MOMENTS, st.integers(0, 4)),
    st.sampled_from(["2025-02-30", "2024-02-29", "2025-05-20T10:00", "now", "2025-13-01"]),
)
SCALARS: st.SearchStrategy[Any] = st.one_of(TEXTS, NUMBERS, st.booleans(), STAMPISH)
ARRAYS = st.lists(st.one_of(SCALARS, st.lists(SCALARS, max_size=1), st.none()), max_size=3)
OBJECTS = st.dictionaries(st.sampled_from(["a", "x"]), SCALARS, max_size=2)
# Mostly scalars, the values conditions compare; some nulls, arrays and objects.
VALUES: st.SearchStrategy[Any] = st.integers(0, 9).flatmap(
    lambda pick: (
        st.none() if pick == 0 else ARRAYS if pick in (1, 2) else OBJECTS if pick == 3 else SCALARS
    )
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    document = {key: draw(VALUES) for key in ("a", "b", "n", "t") if draw(st.integers(0, 3))}
    if draw(st.booleans()):
        nested = draw(st.dictionaries(st.sampled_from(["a", "x"]), VALUES, max_size=2))
        if draw(st.booleans()):
            nested["x"] = {"y": draw(VALUES)}
        document["o"] = nested
    return document


@st.composite
def users(draw: st.DrawFn) -> StoredUser:
    """A user whose stage history has no transition at all (no time in stage), or
    one into their stage, maybe after another stage, maybe followed by a
    transition to the same stage (which does not restart the time in stage)."""
    stage = draw(st.sampled_from(STAGES))
    history: list[Transition] = []
    if draw(st.integers(0, 4)):
        if draw(st.booleans()):
            history.append((None, draw(st.sampled_from(STAGES)), draw(MOMENTS)))
        history.append((history[-1][1] if history else None, stage, draw(MOMENTS)))
        if draw(st.booleans()):
            history.append((stage, stage, draw(MOMENTS)))
    return StoredUser(draw(documents()), stage, draw(MOMENTS), tuple(history))


USERS = users()
TIMED_USERS = st.builds(
    lambda user, t, n: StoredUser(
        {**user.attributes, "t": t, "n": n}, user.stage, user.created_at, user.history
    ),
    USERS,
    TIMESTAMPS,
    TIMESTAMPS,
)


# Regular expressions from the subset's grammar (conditions.patterns).
_LITERALS = st.sampled_from(list("abAB-_@é% ")) | st.sampled_from(
    [f"\\{char}" for char in sorted(METACHARACTERS)]
)
_CLASSES = st.sampled_from(["[a-c]", "[^a]", "[A-Z]", "[a\\-]", "[_@é]", "[^\\\\]", "[%_]"])


def _regex(depth: int) -> st.SearchStrategy[str]:
    atom: st.SearchStrategy[str] = st.one_of(_LITERALS, st.just("."), _CLASSES)
    if depth > 0:
        inner = _regex(depth - 1)
        atom = atom | inner.map(lambda x: f"({x})") | inner.map(lambda x: f"(?:{x})")
    quantifier = st.sampled_from(["", "", "", "*", "+", "?", "{1,2}", "{2}", "{0,}"])
    quantified = st.tuples(atom, quantifier).map("".join)
    sequence = st.lists(quantified, min_size=1, max_size=3).map("".join)
    return st.lists(sequence, min_size=1, max_size=2).map("|".join)


PATTERNS = st.tuples(st.sampled_from(["", "^"]), _regex(1), st.sampled_from(["", "$"])).map("".join)
_CONDITION_SCALARS = st.one_of(TEXTS.filter(bool), NUMBERS, st.booleans(), TIMESTAMPS)
_OP_VALUES: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.SCALAR: _CONDITION_SCALARS,
    Kind.SCALARS: st.lists(_CONDITION_SCALARS, min_size=1, max_size=4),
    Kind.NUMBER: NUMBERS,
    Kind.RANGE: st.lists(NUMBERS, min_size=2, max_size=2).map(sorted),
    Kind.TEXT: NEEDLES,
    Kind.PATTERN: PATTERNS,
    Kind.TIMESTAMP: TIMESTAMPS,
    Kind.DURATION: DURATIONS,
}
_USER_OPERATORS = sorted(name for name, op in OPERATORS.items() if not op.change)


@st.composite
def attribute_leaves(draw: st.DrawFn) -> dict[str, Any]:
    op = OPERATORS[draw(st.sampled_from(_USER_OPERATORS))]
    leaf: dict[str, Any] = {"attr": draw(st.sampled_from(PATHS)), "op": op.name}
    if op.kind is not Kind.NONE:
        leaf["value"] = draw(_OP_VALUES[op.kind])
    if op.ci and draw(st.booleans()):
        leaf["ci"] = True
    return leaf


def _special(name: str, ops: list[str], values: st.SearchStrategy[Any]) -> Any:
    return st.builds(
        lambda op, value: {name: {"op": op, "value": value}}, st.sampled_from(ops), values
    )


STAGE_LEAVES = st.one_of(
    _special("stage", ["eq", "neq"], st.sampled_from(STAGES)),
    _special("stage", ["in", "not_in"], st.lists(st.sampled_from(STAGES), min_size=1, max_size=3)),
    _special("stage_age", ["gt", "gte", "lt", "lte"], DURATIONS),
    _special("created_at", ["before", "after"], TIMESTAMPS),
    _special("created_at", ["within_last", "not_within_last"], DURATIONS),
)
# Mostly attribute leaves: they have the most ways to go wrong.
LEAVES = st.integers(0, 4).flatmap(lambda pick: STAGE_LEAVES if pick == 0 else attribute_leaves())
NODES: st.SearchStrategy[dict[str, Any]] = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: {"all": items}),
        st.lists(inner, max_size=3).map(lambda items: {"any": items}),
        inner.map(lambda item: {"not": item}),
    ),
    max_leaves=4,
)
CONDITIONS = NODES.map(lambda node: {"v": 1, **node})


def _combinations(leaves: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda items: {"all": items}),
            st.lists(inner, min_size=1, max_size=3).map(lambda items: {"any": items}),
            inner.map(lambda item: {"not": item}),
        ),
        max_leaves=5,
    ).map(lambda node: {"v": 1, **node})


# Conditions that time changes, mostly: windows over the timestamps TIMED_USERS
# always have, time in stage and creation time, among a few leaves time never
# changes. What all, any and not make of their children's flips is their subject.
_WINDOWS = st.builds(
    lambda path, op, value: {"attr": path, "op": op, "value": value},
    st.sampled_from(["t", "n"]),
    st.sampled_from(["within_last", "not_within_last"]),
    DURATIONS,
)
TIME_CONDITIONS = _combinations(
    st.integers(0, 5).flatmap(
        lambda pick: (
            _special("stage_age", ["gt", "gte", "lt", "lte"], DURATIONS)
            if pick == 0
            else _special("created_at", ["within_last", "not_within_last"], DURATIONS)
            if pick == 1
            else st.just({"attr": "a", "op": "exists"})
            if pick == 2
            else _WINDOWS
        )
    )
)
