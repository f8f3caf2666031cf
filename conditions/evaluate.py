"""The Python evaluator: a condition compiled once into closures, then evaluated
for one user or one event at a time (segments' incremental path, triggers).

It means exactly what conditions.sql means in PostgreSQL; the property
test in tests/segments checks that on generated conditions and documents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from conditions import events
from conditions.events import PersonEvent
from conditions.model import (
    AllOf,
    AnyOf,
    AttributeLeaf,
    Condition,
    CreatedAtLeaf,
    EventLeaf,
    EventTypeLeaf,
    Kind,
    Node,
    Not,
    SegmentRef,
    StageAgeLeaf,
    StageLeaf,
)
from conditions.moments import json_moment, moment_test, window_flip, within
from conditions.patterns import compile_pattern, fold
from conditions.values import (
    MICROSECOND,
    MISSING,
    Number,
    format_duration,
    json_equal,
    later,
    lookup,
    number,
    parse_timestamp,
    utc,
)


@dataclass(frozen=True)
class UserProfile:
    """What a condition reads of a user."""

    attributes: Mapping[str, Any]
    stage: str
    created_at: datetime
    # When the user entered their current stage; None if the history has no entry.
    stage_entered_at: datetime | None
    # Their tracked events that the conditions evaluated read (event leaves).
    events: tuple[PersonEvent, ...] = ()


@dataclass(frozen=True)
class AttributeChanges:
    """The user's attributes before and after the change an event reports."""

    before: Mapping[str, Any]
    after: Mapping[str, Any]


@dataclass(frozen=True)
class Context:
    """Everything one evaluation may read, at the moment `as_of`."""

    as_of: datetime
    user: UserProfile | None = None
    event_type: str | None = None
    event_data: Mapping[str, Any] | None = None
    changes: AttributeChanges | None = None
    # The scalars of each long list the leaves tested (has, has_any, has_all), by
    # the list's id: read once per evaluation, however many leaves test the list.
    # The list is kept with them, so its id stays its own while this context lives.
    lists: dict[int, tuple[list[Any], _Scalars]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )


@dataclass(frozen=True)
class LeafOutcome:
    """One leaf of an explanation: what it looked at and whether it held."""

    location: str
    leaf: Mapping[str, Any]
    # The value the leaf read, as JSON; MISSING when there was none.
    actual: Any
    held: bool


Test = Callable[[Context], bool]
Flip = Callable[[Context], datetime | None]
_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class _Program:
    test: Test
    # The next instant the node's answer may change by time alone (a lower bound
    # for all and any, as conditions.sql explains); None for a node time
    # never changes, or when it returns None: never.
    flip: Flip | None
    # Leaves only: the value read and its JSON form for explanations.
    read: Callable[[Context], Any] | None = None
    show: Callable[[Any, Context], Any] | None = None


class Evaluator:
    """A compiled condition. `matches` is the hot path; `valid_until` and
    `explain` serve the membership cache and ExplainMembership."""

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self._programs: dict[int, _Program] = {}
        root = self._compile(condition.root)
        self.matches: Test = root.test
        self._flip = root.flip

    def valid_until(self, context: Context) -> datetime | None:
        """The first instant after `as_of` at which time alone may change the answer
        (UTC), for a user who matches (they may leave) as for one who does not (they
        may enter); None when time alone never changes it."""
        if self._flip is None:
            return None
        moment = self._flip(context)
        return utc(moment) if moment is not None else None

    def explain(self, context: Context) -> list[LeafOutcome]:
        outcomes: list[LeafOutcome] = []
        self._explain(self.condition.root, context, "", outcomes)
        return outcomes

    def _explain(self, node: Node, context: Context, prefix: str, out: list[LeafOutcome]) -> None:
        if isinstance(node, AllOf | AnyOf):
            for child in node.children:
                self._explain(child, context, prefix, out)
            return
        if isinstance(node, Not):
            self._explain(node.child, context, prefix, out)
            return
        program = self._programs[id(node)]
        location = ".".join(part for part in (prefix, node.location) if part)
        actual = MISSING
        if program.read is not None and program.show is not None:
            actual = program.show(program.read(context), context)
        out.append(LeafOutcome(location, node.source_json, actual, program.test(context)))
        if isinstance(node, SegmentRef) and node.condition is not None:
            self._explain(node.condition.root, context, f"{location}.in_segment", out)

    def _compile(self, node: Node) -> _Program:
        program = self._compile_node(node)
        self._programs[id(node)] = program
        return program

    def _compile_node(self, node: Node) -> _Program:
        if isinstance(node, AllOf | AnyOf):
            children = [self._compile(child) for child in node.children]
            return _combination(children, conjunction=isinstance(node, AllOf))
        if isinstance(node, Not):
            child = self._compile(node.child)
            child_test = child.test
            return _Program(lambda context: not child_test(context), child.flip)
        if isinstance(node, SegmentRef):
            return self._segment(node)
        if isinstance(node, AttributeLeaf):
            return _attribute(node)
        if isinstance(node, StageLeaf):
            return _stage(node)
        if isinstance(node, StageAgeLeaf):
            return _stage_age(node)
        if isinstance(node, CreatedAtLeaf):
            return _created_at(node)
        if isinstance(node, EventLeaf):
            return self._event(node)
        return _event_type(node)

    def _event(self, node: EventLeaf) -> _Program:
        where = self._compile(node.where).test if node.where is not None else None
        data_test = None
        if where is not None:
            data_test = lambda data, as_of: where(Context(as_of, event_data=data))  # noqa: E731

        anchor = node.window.anchor

        def read(context: Context) -> Any:
            user = context.user
            if user is None:
                return []
            at = events.anchor_moment(anchor, user.attributes, user.created_at)
            return events.moments(node, user.events, context.as_of, data_test, at)

        show = lambda found, _: json_moment(events.measured(node, found))  # noqa: E731
        if node.measure == "count":
            holds = lambda found, _: events.count_holds(node, len(found))  # noqa: E731
            return _leaf(read, holds, False, lambda found, _: events.count_flip(node, found), show)
        moment = moment_test(node.op, node.value)
        return _leaf(
            lambda context: events.measured(node, read(context)),
            moment.holds,
            node.op.negated,
            moment.flip,
            lambda value, _: json_moment(value),
        )

    def _segment(self, node: SegmentRef) -> _Program:
        if node.condition is None:
            raise ValueError(f"in_segment {node.segment_id} at {node.location!r} is not resolved")
        inner = self._compile(node.condition.root)
        inner_test, inner_flip, stages = inner.test, inner.flip, frozenset(node.stages)

        def in_stages(context: Context) -> bool:
            return not stages or (context.user is not None and context.user.stage in stages)

        def test(context: Context) -> bool:
            return in_stages(context) and inner_test(context)

        flip = None
        if inner_flip is not None:
            # Out of the stages, time alone changes nothing.
            flip = lambda context: inner_flip(context) if in_stages(context) else None  # noqa: E731
        return _Program(test, flip, read=_read_stage, show=lambda value, _: value)


# Loops, not all()/any() over generators: this is the evaluator's hot path.


def _all(tests: Sequence[Test]) -> Test:
    def test(context: Context) -> bool:
        for one in tests:  # noqa: SIM110
            if not one(context):
                return False
        return True

    return test


def _any(tests: Sequence[Test]) -> Test:
    def test(context: Context) -> bool:
        for one in tests:  # noqa: SIM110
            if one(context):
                return True
        return False

    return test


def _combination(children: Sequence[_Program], *, conjunction: bool) -> _Program:
    """An `all` (conjunction) or `any`, and its flip as the SQL compiler builds it:
    while the children agree (an `all` holding, an `any` failing), their earliest
    flip; while some decide it alone, the latest of theirs, never if one never flips."""
    test = (_all if conjunction else _any)(tuple(child.test for child in children))
    flips = [child.flip for child in children if child.flip is not None]
    if not flips:
        return _Program(test, None)
    if len(children) == 1:
        return _Program(test, flips[0])
    members = [(child.test, child.flip) for child in children]

    def flip(context: Context) -> datetime | None:
        if test(context) is conjunction:
            moments = [m for m in (one(context) for one in flips) if m is not None]
            return min(moments, default=None)
        last = None
        for child_test, child_flip in members:
            if child_test(context) is not conjunction:
                moment = child_flip(context) if child_flip is not None else None
                if moment is None:
                    return None
                last = moment if last is None else max(last, moment)
        return last

    return _Program(test, flip)


def _leaf(
    read: Callable[[Context], Any],
    holds: Callable[[Any, Context], bool],
    negated: bool,
    flip: Callable[[Any, Context], datetime | None] | None = None,
    show: Callable[[Any, Context], Any] = lambda value, _: value,
) -> _Program:
    if negated:
        test: Test = lambda context: not holds(read(context), context)  # noqa: E731
    else:
        test = lambda context: holds(read(context), context)  # noqa: E731
    leaf_flip = None
    if flip is not None:
        flip_of_value = flip
        leaf_flip = lambda context: flip_of_value(read(context), context)  # noqa: E731
    return _Program(test, leaf_flip, read, show)


# Attribute leaves


def _reader(node: AttributeLeaf) -> Callable[[Context], Any]:
    keys = node.keys
    if node.op.change:

        def read_change(context: Context) -> Any:
            changes = context.changes
            if changes is None:
                return MISSING
            return (lookup(changes.before, keys), lookup(changes.after, keys))

        return read_change
    if node.source == "event":
        return lambda context: lookup(context.event_data or _EMPTY, keys)
    if len(keys) == 1:
        key = keys[0]
        return lambda context: (context.user.attributes if context.user else _EMPTY).get(
            key, MISSING
        )
    return lambda context: lookup(context.user.attributes if context.user else _EMPTY, keys)


def _equals(expected: Any) -> Callable[[Any], bool]:
    """Strict JSON equality with one scalar: no coercion, numbers by value."""
    if isinstance(expected, bool):
        return lambda value: type(value) is bool and value == expected
    if isinstance(expected, str):
        return lambda value: type(value) is str and value == expected
    return lambda value: number(value) == expected


def _member_of(values: Sequence[Any]) -> Callable[[Any], bool]:
    """Equality with any of several scalars (three sets: True == 1 in Python, not in JSON)."""
    texts = frozenset(v for v in values if isinstance(v, str))
    flags = frozenset(v for v in values if isinstance(v, bool))
    numbers = frozenset(v for v in values if isinstance(v, int | Decimal) and type(v) is not bool)

    def test(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value in texts
        if kind is bool:
            return value in flags
        numeric = number(value)
        return numeric is not None and numeric in numbers

    return test


def _attribute(node: AttributeLeaf) -> _Program:
    read = _reader(node)
    op, value, ci = node.op.positive, node.value, node.ci
    negated = node.op.negated
    if op in _CHANGE_TESTS:
        return _leaf(read, _CHANGE_TESTS[op](value), negated, show=_show_change)
    if node.op.kind is Kind.DURATION:
        duration: timedelta = value
        return _leaf(read, within(duration), negated, window_flip(duration))
    if op in _LIST_TESTS:
        return _leaf(read, _LIST_TESTS[op](value), negated)
    holds = _VALUE_TESTS[op](value, ci)
    return _leaf(read, lambda actual, _: holds(actual), negated)


def _text(test: Callable[[str, str], bool]) -> Callable[[Any, bool], Callable[[Any], bool]]:
    def build(expected: Any, ci: bool) -> Callable[[Any], bool]:
        if ci:
            return lambda value: type(value) is str and test(fold(value), expected)
        return lambda value: type(value) is str and test(value, expected)

    return build


def _regex(pattern: Any, ci: bool) -> Callable[[Any], bool]:
    search = compile_pattern(pattern).search
    if ci:
        return lambda value: type(value) is str and search(fold(value)) is not None
    return lambda value: type(value) is str and search(value) is not None


def _compare(test: Callable[[Any, Any], bool]) -> Callable[[Any, bool], Callable[[Any], bool]]:
    def build(expected: Any, ci: bool) -> Callable[[Any], bool]:
        def holds(value: Any) -> bool:
            numeric = number(value)
            return numeric is not None and test(numeric, expected)

        return holds

    return build


# Lists up to this long are scanned; longer ones are read into sets once per
# evaluation (attributes and event data may hold lists of many thousands, and a
# condition a hundred leaves, a thousand with its segments inlined).
_SHORT_LIST = 16


@dataclass(frozen=True)
class _Scalars:
    """Scalars by kind, as JSON compares them (True == 1 in Python, not in JSON)."""

    texts: frozenset[str]
    flags: frozenset[bool]
    numbers: frozenset[Number]

    @classmethod
    def of(cls, values: Sequence[Any]) -> _Scalars:
        return cls(
            frozenset(v for v in values if type(v) is str),
            frozenset(v for v in values if type(v) is bool),
            frozenset(n for n in map(number, values) if n is not None),
        )

    def covers(self, other: _Scalars) -> bool:
        return (
            other.texts <= self.texts
            and other.flags <= self.flags
            and other.numbers <= self.numbers
        )

    def meets(self, other: _Scalars) -> bool:
        return not (
            self.texts.isdisjoint(other.texts)
            and self.flags.isdisjoint(other.flags)
            and self.numbers.isdisjoint(other.numbers)
        )


def _scalars(value: list[Any], context: Context) -> _Scalars:
    known = context.lists.get(id(value))
    if known is None:
        known = (value, _Scalars.of(value))
        context.lists[id(value)] = known
    return known[1]


ListTest = Callable[[Any, Context], bool]


def _has(expected: Any) -> ListTest:
    equal, wanted = _equals(expected), _Scalars.of([expected])

    def test(value: Any, context: Context) -> bool:
        if type(value) is not list:
            return False
        if len(value) <= _SHORT_LIST:
            return any(map(equal, value))
        return _scalars(value, context).covers(wanted)

    return test


def _has_any(expected: Any) -> ListTest:
    member, wanted = _member_of(expected), _Scalars.of(expected)

    def test(value: Any, context: Context) -> bool:
        if type(value) is not list:
            return False
        if len(value) <= _SHORT_LIST:
            return any(map(member, value))
        return _scalars(value, context).meets(wanted)

    return test


def _has_all(expected: Any) -> ListTest:
    wanted = _Scalars.of(expected)

    def test(value: Any, context: Context) -> bool:
        if type(value) is not list:
            return False
        present = _Scalars.of(value) if len(value) <= _SHORT_LIST else _scalars(value, context)
        return present.covers(wanted)

    return test


_LIST_TESTS: dict[str, Callable[[Any], ListTest]] = {
    "has": _has,
    "has_any": _has_any,
    "has_all": _has_all,
}


def _moment(test: Callable[[datetime, datetime], bool]) -> Callable[..., Callable[[Any], bool]]:
    def build(expected: datetime, ci: bool) -> Callable[[Any], bool]:
        def holds(value: Any) -> bool:
            moment = parse_timestamp(value)
            return moment is not None and test(moment, expected)

        return holds

    return build


def _exists(expected: Any, ci: bool) -> Callable[[Any], bool]:
    return lambda value: value is not MISSING and value is not None


_VALUE_TESTS: dict[str, Callable[[Any, bool], Callable[[Any], bool]]] = {
    "eq": lambda expected, ci: _equals(expected),
    "in": lambda expected, ci: _member_of(expected),
    "exists": _exists,
    "gt": _compare(lambda a, b: a > b),
    "gte": _compare(lambda a, b: a >= b),
    "lt": _compare(lambda a, b: a < b),
    "lte": _compare(lambda a, b: a <= b),
    "between": _compare(lambda a, bounds: bounds[0] <= a <= bounds[1]),
    "contains": _text(lambda value, part: part in value),
    "starts_with": _text(str.startswith),
    "ends_with": _text(str.endswith),
    "regex": _regex,
    "before": _moment(lambda moment, limit: moment < limit),
    "after": _moment(lambda moment, limit: moment > limit),
}


def _changed(expected: Any) -> Callable[[Any, Context], bool]:
    return lambda pair, _: pair is not MISSING and not json_equal(pair[0], pair[1])


def _changed_to(expected: Any) -> Callable[[Any, Context], bool]:
    equal = _equals(expected)
    return lambda pair, _: (
        pair is not MISSING and not json_equal(pair[0], pair[1]) and equal(pair[1])
    )


def _changed_from(expected: Any) -> Callable[[Any, Context], bool]:
    equal = _equals(expected)
    return lambda pair, _: (
        pair is not MISSING and not json_equal(pair[0], pair[1]) and equal(pair[0])
    )


_CHANGE_TESTS = {"changed": _changed, "changed_to": _changed_to, "changed_from": _changed_from}


def _show_change(pair: Any, context: Context) -> Any:
    if pair is MISSING:
        return MISSING
    return {"from": _json(pair[0]), "to": _json(pair[1])}


def _json(value: Any) -> Any:
    return None if value is MISSING else value


def _read_stage(context: Context) -> Any:
    return context.user.stage if context.user is not None else MISSING


def _stage(node: StageLeaf) -> _Program:
    stages = frozenset(node.stages)
    return _leaf(_read_stage, lambda stage, _: stage in stages, node.negated)


def _read_entered(context: Context) -> Any:
    if context.user is None or context.user.stage_entered_at is None:
        return MISSING
    return context.user.stage_entered_at


def _stage_age(node: StageAgeLeaf) -> _Program:
    """The age is as_of - entered; `age > D` is `as_of > entered + D`, and so on."""
    duration, op = node.duration, node.op
    strict = op in ("gt", "lte")
    # gt and gte hold once the threshold is passed; lt and lte until it is.
    passed_holds = op in ("gt", "gte")

    def holds(entered: Any, context: Context) -> bool:
        if entered is MISSING:
            return False
        threshold = later(entered, duration)
        if threshold is None:
            return not passed_holds
        passed = context.as_of > threshold if strict else context.as_of >= threshold
        return passed == passed_holds

    def flip(entered: Any, context: Context) -> datetime | None:
        threshold = None if entered is MISSING else later(entered, duration)
        if threshold is None:
            return None
        if strict:
            return later(threshold, MICROSECOND) if context.as_of <= threshold else None
        return threshold if context.as_of < threshold else None

    def show(entered: Any, context: Context) -> Any:
        return MISSING if entered is MISSING else format_duration(context.as_of - entered)

    return _leaf(_read_entered, holds, False, flip, show)


def _read_created(context: Context) -> Any:
    return context.user.created_at if context.user is not None else MISSING


def _created_at(node: CreatedAtLeaf) -> _Program:
    value = node.duration if node.duration is not None else node.moment
    assert value is not None
    moment = moment_test(node.op, value)
    show = lambda created, _: json_moment(created)  # noqa: E731
    return _leaf(_read_created, moment.holds, node.op.negated, moment.flip, show)


def _event_type(node: EventTypeLeaf) -> _Program:
    def read(context: Context) -> Any:
        return context.event_type if context.event_type is not None else MISSING

    if node.prefix:
        prefix = node.values[0]
        holds = lambda kind, _: kind is not MISSING and kind.startswith(prefix)  # noqa: E731
    else:
        kinds = frozenset(node.values)
        holds = lambda kind, _: kind in kinds  # noqa: E731
    return _leaf(read, holds, node.negated)
