"""The compiler to PostgreSQL: a WHERE clause over the users service's tables.

The clause reads `u.attributes`, `u.current_lifecycle_stage`, `u.created_at`
of `users u` and the lateral subqueries it lists in `joins`: the moment a
user entered their stage, and each timestamp attribute a time window reads,
read and parsed once per user by `condition_timestamp` (users migrations 0002
and 0003) for both the test and the moment it flips. Every value is a bind parameter, attribute
paths included (as text[]). Every leaf is two-valued (never NULL), so `not` is
SQL's NOT.

Equality, `in` and the array operators are containment (`@>`), which the GIN
index on users.attributes serves; an `in` is an OR of containments, which the
planner turns into a BitmapOr of index scans. Other leaves are filters.

Each node that time alone may change also compiles to its next flip: how long
after `as_of` its answer may change, as an interval signed by the answer
(positive while it holds, negative while it fails; NEVER, farther than any two
timestamps are apart, when time alone never changes it). A leaf's is exact;
`all` and `any` combine their children's by what each answer needs (an `all`
that fails enters no earlier than the latest entry of its failing children,
and never if one of them never enters; it leaves at its first child's exit;
`any` the other way round), so the root's flip is a lower bound of the moment
its answer changes, for users who match (they leave) and users who do not
(they enter). The sign makes that rule an order: an `all` is the LEAST of its
children's flips (a failing child's, negative, wins, the latest entry
foremost; else the first exit), an `any` the GREATEST, a `not` the negation.
So each node's SQL is written once in its parent's: the SQL grows with the
condition's size, whatever its depth, and stays plain expressions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from conditions.model import (
    AllOf,
    AnyOf,
    AttributeLeaf,
    Condition,
    CreatedAtLeaf,
    EventAnchor,
    EventLeaf,
    EventTypeLeaf,
    Kind,
    Node,
    Not,
    SegmentRef,
    StageAgeLeaf,
    StageLeaf,
)
from conditions.values import MICROSECOND
from runtime.errors import InvalidArgument

ATTRIBUTES = "u.attributes"
STAGE = "u.current_lifecycle_stage"
CREATED_AT = "u.created_at"
STAGE_ENTERED_AT = "stage_entry.entered_at"
# The lateral join that gives each user the moment they entered their stage:
# their last transition that changed the stage (the first one has no from_stage).
STAGE_ENTRY_JOIN = (
    "LEFT JOIN LATERAL (SELECT max(h.transitioned_at) AS entered_at"
    " FROM user_lifecycle_history h WHERE h.user_id = u.id"
    " AND h.from_stage IS DISTINCT FROM h.to_stage) stage_entry ON true"
)


_NEVER = "interval '1000000000 days'"
_FAILS_FOR_EVER = "interval '-1000000000 days'"
_MICROSECOND = "interval '1 microsecond'"


@dataclass
class SqlCondition:
    """The condition split in two: `where`, the part time never changes (the
    root's children that read no time: "true" if none) and the cheap tests the
    children need for ever once they fail (a window's moment not behind it: its
    start only moves on; a count's people with enough events: counts only fall),
    which every user who matches now or may match later satisfies, and `timed`,
    the rest, which holds for the users of `where` who match now (None when the
    condition reads no time)."""

    where: str
    timed: str | None
    # For a user of `where`: how long until time alone may change whether they
    # match, signed by the answer (see the module). None when the condition reads
    # no time; `exit_at` and `entry_at` turn it into a moment.
    flip: str | None
    params: list[Any]
    # What the query joins to `users u` (FROM users u <joins> WHERE <where>).
    joins: list[str]
    # The parameter of the moment the condition is evaluated at; "" without `flip`.
    as_of: str = ""

    @property
    def matches(self) -> str:
        return self.where if self.timed is None else f"{self.where} AND {self.timed}"

    def exit_at(self, flip: str) -> str:
        """When time alone may end the match of a user who matches, from their
        `flip` (an expression or column); NULL if never."""
        return f"(({self.as_of} AT TIME ZONE 'UTC') + NULLIF({flip}, {_NEVER})) AT TIME ZONE 'UTC'"

    def may_match(self, matched: str, flip: str) -> str:
        """Whether a user of `where` matches now or may later by time alone, from
        their `matched` and `flip` (expressions or columns)."""
        return f"({matched} OR {flip} > {_FAILS_FOR_EVER})"

    def entry_at(self, flip: str) -> str:
        """When time alone may make a user who does not match start to, from their
        `flip`; NULL if never."""
        return (
            f"(({self.as_of} AT TIME ZONE 'UTC') - NULLIF({flip}, {_FAILS_FOR_EVER}))"
            " AT TIME ZONE 'UTC'"
        )


@dataclass(frozen=True)
class _Compiled:
    test: str
    # The node's next flip, signed by its answer; None for a node time never changes.
    flip: str | None = None
    # A cheap test that every user for whom the node holds now or will later
    # passes (a window's moment not yet behind it for good, a count's set of the
    # people with enough events); None if none is known.
    necessary: str | None = None


@dataclass
class _Compiler:
    as_of: datetime
    request_field: str
    first: int
    params: list[Any] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    # Each moment a window reads: its lateral's alias and the test of its text.
    moments: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)
    _as_of_param: str = ""
    # The JSON document attribute leaves read: the user's attributes, or an
    # event's data inside an event leaf's `where`.
    document: str = ATTRIBUTES

    def param(self, value: Any, cast: str) -> str:
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}::{cast}"

    def now(self) -> str:
        if not self._as_of_param:
            self._as_of_param = self.param(self.as_of, "timestamptz")
        return self._as_of_param

    def micros(self, duration: timedelta) -> str:
        """A duration as an interval of microseconds only, so that adding it never
        depends on the session's time zone (days are not always 24 hours there)."""
        return f"({self.param(duration // MICROSECOND, 'bigint')} * interval '1 microsecond')"

    def node(self, node: Node) -> _Compiled:
        if isinstance(node, AllOf):
            return _all_of([self.node(child) for child in node.children])
        if isinstance(node, AnyOf):
            return _any_of([self.node(child) for child in node.children])
        if isinstance(node, Not):
            return _negation(self.node(node.child))
        if isinstance(node, SegmentRef):
            return self.segment(node)
        if isinstance(node, AttributeLeaf):
            return self.attribute(node)
        if isinstance(node, StageLeaf):
            clause = f"{STAGE} = ANY({self.param(list(node.stages), 'text[]')})"
            return _Compiled(f"(NOT {clause})" if node.negated else f"({clause})")
        if isinstance(node, StageAgeLeaf):
            return self.stage_age(node)
        if isinstance(node, CreatedAtLeaf):
            return self.created_at(node)
        if isinstance(node, EventLeaf):
            return self.event(node)
        return self.refuse(node, "event_type leaves are evaluated per event and cannot run in SQL")

    def refuse(self, node: EventTypeLeaf | AttributeLeaf | SegmentRef, message: str) -> NoReturn:
        at = f"{self.request_field}.{node.location}" if node.location else self.request_field
        raise InvalidArgument.field(at, message)

    def segment(self, node: SegmentRef) -> _Compiled:
        if node.condition is None:
            self.refuse(node, "in_segment must be resolved before it runs in SQL")
        inner = self.node(node.condition.root)
        if not node.stages:
            return inner
        stage = _Compiled(f"({STAGE} = ANY({self.param(list(node.stages), 'text[]')}))")
        return _all_of([stage, inner])

    def attribute(self, node: AttributeLeaf) -> _Compiled:
        event_data = node.source == "event" and self.document != ATTRIBUTES
        if not (node.source == "user" or event_data) or node.op.change:
            self.refuse(node, "event and change leaves are evaluated per event, not in SQL")
        clause = self.positive(node)
        return _negation(clause) if node.op.negated else clause

    def positive(self, node: AttributeLeaf) -> _Compiled:
        op, value, keys = node.op.positive, node.value, node.keys
        if op == "within_last":
            # Its text, not the parsed moment: a test the scan runs before the parse.
            moment, not_passed = self.moment(keys, value)
            return replace(self.window(moment, value), necessary=not_passed)
        return _Compiled(self.static(op, node))

    def static(self, op: str, node: AttributeLeaf) -> str:
        value, keys = node.value, node.keys
        if op == "eq":
            return self.contains(keys, _json_text(value))
        if op == "in":
            return "(" + " OR ".join(self.contains(keys, _json_text(v)) for v in value) + ")"
        if op == "has":
            return self.contains(keys, f"[{_json_text(value)}]")
        if op == "has_any":
            return "(" + " OR ".join(self.contains(keys, f"[{_json_text(v)}]") for v in value) + ")"
        if op == "has_all":
            return self.contains(keys, "[" + ",".join(map(_json_text, value)) + "]")
        found = f"({self.document} #> {self.param(list(keys), 'text[]')})"
        if op == "exists":
            return f"coalesce(jsonb_typeof({found}) <> 'null', false)"
        if node.op.kind in (Kind.NUMBER, Kind.RANGE):
            return self.numeric(op, found, value)
        if node.op.kind in (Kind.TEXT, Kind.PATTERN):
            return self.text(op, found, value, node.ci)
        moment = f"condition_timestamp({found} #>> '{{}}')"
        limit = self.param(value, "timestamptz")
        return f"coalesce({moment} {'<' if op == 'before' else '>'} {limit}, false)"

    def moment(self, keys: tuple[str, ...], window: timedelta) -> tuple[str, str]:
        """A timestamp attribute a window reads, parsed once per user in a lateral
        subquery, and only when it may matter: text whose date is two days before
        the window's start or earlier is, if a timestamp at all, before the window,
        offsets (at most 14:59) included, and can never enter it; NULL says the
        same for it. Parsing is what a window costs; most texts skip it. Each
        OFFSET 0 keeps the planner from copying an expression into each place that
        reads it: the parse into the test and the flip, the attribute's lookup into
        the inlined parse, which reads its text a dozen times. Also the test of its
        text alone that a moment in or ahead of the window passes."""
        oldest = (self.as_of - window - timedelta(days=1)).astimezone(UTC).date().isoformat()
        known = self.moments.get((*keys, oldest))
        if known is None:
            alias = f"moment_{len(self.moments)}"
            oldest_param, path = self.param(oldest, "text"), self.param(list(keys), "text[]")
            known = (alias, f'(({ATTRIBUTES} #>> {path}) COLLATE "C" >= {oldest_param})')
            self.moments[(*keys, oldest)] = known
            self.joins.append(
                f'CROSS JOIN LATERAL (SELECT CASE WHEN v.text COLLATE "C" >= {oldest_param}'
                " THEN condition_timestamp(v.text) END AS at"
                f" FROM (SELECT {ATTRIBUTES} #>> {path} AS text OFFSET 0) v OFFSET 0) {alias}"
            )
        alias, not_passed = known
        return f"{alias}.at", not_passed

    def contains(self, keys: tuple[str, ...], leaf_json: str) -> str:
        document = leaf_json
        for key in reversed(keys):
            document = "{" + json.dumps(key) + ":" + document + "}"
        return f"({self.document} @> {self.param(document, 'text::jsonb')})"

    def numeric(self, op: str, found: str, value: Any) -> str:
        # The type guard matters: jsonb orders across types ('true' > '30').
        guard = f"jsonb_typeof({found}) = 'number'"
        if op == "between":
            low, high = (self.param(_json_text(v), "text::jsonb") for v in value)
            return f"coalesce({guard} AND {found} >= {low} AND {found} <= {high}, false)"
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        limit = self.param(_json_text(value), "text::jsonb")
        return f"coalesce({guard} AND {found} {symbol} {limit}, false)"

    def text(self, op: str, found: str, value: str, ci: bool) -> str:
        subject = f"({found} #>> '{{}}')"
        if ci:
            # The C collation's lower() folds ASCII letters only, as Python's fold().
            subject = f'lower({subject} COLLATE "C")'
        guard = f"jsonb_typeof({found}) = 'string'"
        if op == "regex":
            return f"coalesce({guard} AND {subject} ~ {self.param(value, 'text')}, false)"
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {
            "contains": f"%{escaped}%",
            "starts_with": f"{escaped}%",
            "ends_with": f"%{escaped}",
        }[op]
        return f"coalesce({guard} AND {subject} LIKE {self.param(pattern, 'text')}, false)"

    def window(self, moment: str, duration: timedelta) -> _Compiled:
        """`moment` within [as_of - duration, as_of]: it enters the window when
        it is in the future, leaves it `duration` and a microsecond after it."""
        now = self.now()
        since = self.param(self.as_of - duration, "timestamptz")
        # Ahead of the window, it fails until it comes; in it, holds until it
        # leaves; before it (or absent), fails for ever. Differences of timestamps
        # are intervals of days and time that no time zone changes.
        flip = (
            f"CASE WHEN {moment} > {now} THEN {now} - {moment}"
            f" WHEN {moment} >= {since} THEN {moment} - {since} + {_MICROSECOND}"
            f" ELSE {_FAILS_FOR_EVER} END"
        )
        # The moment is a column (a lateral's or the user's), cheap to read twice.
        test = f"coalesce({moment} >= {since} AND {moment} <= {now}, false)"
        # The window's start only moves on: a moment behind it stays behind it.
        return _Compiled(test, flip, f"({moment} >= {since})")

    def event(self, node: EventLeaf) -> _Compiled:
        """The person's events the leaf reads, counted (and, for a `last` window,
        listed newest first, for the flip) or their first and last moments, in
        a lateral subquery over `user_events` (its index on (user, type, time))."""
        alias = f"events_{len(self.joins)}"
        now, window = self.now(), node.window
        kind = "starts_with(e.event_type, {})" if node.prefix else "e.event_type = {}"
        tests = [kind.format(self.param(node.event_type, "text")), f"e.occurred_at <= {now}"]
        since = self.as_of - window.last if window.last is not None else window.since
        if since is not None:
            tests.append(f"e.occurred_at >= {self.param(since, 'timestamptz')}")
        if window.until is not None:
            tests.append(f"e.occurred_at <= {self.param(window.until, 'timestamptz')}")
        if node.where is not None:
            data = _Compiler(self.as_of, self.request_field, self.first, self.params)
            data.document = "e.data"
            tests.append(data.node(node.where).test)
        # The set of people with enough events reads no person's own moment: for
        # an anchored window it holds those with enough events at all, a superset.
        set_tests = list(tests)
        if window.anchor is not None:
            tests.append(self.anchored(window.anchor))
        newest = ", array_agg(e.occurred_at ORDER BY e.occurred_at DESC) AS newest"
        self.joins.append(
            "CROSS JOIN LATERAL (SELECT count(*) AS n, min(e.occurred_at) AS first,"
            f" max(e.occurred_at) AS last{newest if window.last is not None else ''}"
            f" FROM user_events e WHERE e.user_id = u.id AND {' AND '.join(tests)}) {alias}"
        )
        if node.measure != "count":
            moment = f"{alias}.{node.measure}"
            if isinstance(node.value, timedelta):
                clause = self.window(moment, node.value)
            else:
                symbol = "<" if node.op.name == "before" else ">"
                limit = self.param(node.value, "timestamptz")
                clause = _Compiled(f"coalesce({moment} {symbol} {limit}, false)")
            return _negation(clause) if node.op.negated else clause
        n = self.param(node.value, "integer")
        counted = self.count(node, alias, n)
        least = _least_count(node, n)
        if least is None:
            return counted
        # The people with at least so many of these events, as one aggregate
        # over them: a hashed set the users scan filters by before any lateral.
        # It is the leaf's `necessary`, which `where` tests once; the test reads
        # the lateral's count (a second copy of the set there was a second scan
        # of the events, a hashed subplan). It binds nothing of its own: where a
        # parent drops it (a `not`), each parameter is still in the test.
        having = (
            f"u.id IN (SELECT e.user_id FROM user_events e WHERE {' AND '.join(set_tests)}"
            f" GROUP BY e.user_id HAVING count(*) >= {least})"
        )
        return replace(counted, necessary=having)

    def anchored(self, anchor: EventAnchor) -> str:
        """An anchored window's bounds on `e.occurred_at`, from the person's moment:
        an attribute's read and parsed once per user, in a lateral joined before
        the events' one. Without a moment (NULL) the bounds hold for no event."""
        moment = CREATED_AT
        if anchor.keys:
            alias = f"anchor_{len(self.joins)}"
            path = self.param(list(anchor.keys), "text[]")
            self.joins.append(
                f"CROSS JOIN LATERAL (SELECT condition_timestamp({ATTRIBUTES} #>> {path}) AS at"
                f" OFFSET 0) {alias}"
            )
            moment = f"{alias}.at"
        span = self.micros(anchor.span)
        if anchor.before:
            return f"e.occurred_at >= {moment} - {span} AND e.occurred_at <= {moment}"
        return f"e.occurred_at >= {moment} AND e.occurred_at <= {moment} + {span}"

    def count(self, node: EventLeaf, alias: str, n: str) -> _Compiled:
        """The lateral's count compared with `n` (the bound value), and its flip."""
        symbol = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        test = f"({alias}.n {symbol[node.op.name]} {n})"
        if node.window.last is None:
            return _Compiled(test)
        # conditions.events.threshold: the rank of the event whose exit flips it.
        if node.op.name in ("eq", "neq"):
            rank = f"CASE WHEN {alias}.n > {n} THEN {n} + 1 ELSE {n} END"
        else:
            rank = f"{n} + 1" if node.op.name in ("gt", "lte") else n
        leaves = f"({alias}.newest[{rank}] + {self.micros(node.window.last + MICROSECOND)})"
        now, never = self.now(), f"CASE WHEN {test} THEN {_NEVER} ELSE {_FAILS_FOR_EVER} END"
        flip = (
            f"CASE WHEN {leaves} IS NULL THEN {never}"
            f" WHEN {test} THEN {leaves} - {now} ELSE {now} - {leaves} END"
        )
        return _Compiled(test, flip)

    def stage_age(self, node: StageAgeLeaf) -> _Compiled:
        if STAGE_ENTRY_JOIN not in self.joins:
            self.joins.append(STAGE_ENTRY_JOIN)
        now = self.now()
        threshold = f"({STAGE_ENTERED_AT} + {self.micros(node.duration)})"
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[node.op]
        # The threshold passes `until` from now; without a recorded entry it is
        # NULL: never true, never flips.
        strict = node.op in ("gt", "lte")
        before = f"{now} {'<=' if strict else '<'} {threshold}"
        until = f"{threshold} - {now}" + (f" + {_MICROSECOND}" if strict else "")
        if node.op in ("gt", "gte"):
            # Fails until the threshold passes, then holds for ever.
            flip = (
                f"CASE WHEN {before} THEN {_negated(until)}"
                f" WHEN {threshold} IS NOT NULL THEN {_NEVER} ELSE {_FAILS_FOR_EVER} END"
            )
        else:
            # Holds until it passes, then fails for ever.
            flip = f"CASE WHEN {before} THEN {until} ELSE {_FAILS_FOR_EVER} END"
        return _Compiled(f"coalesce({now} {symbol} {threshold}, false)", flip)

    def created_at(self, node: CreatedAtLeaf) -> _Compiled:
        if node.duration is not None:
            clause = self.window(CREATED_AT, node.duration)
        else:
            symbol = "<" if node.op.name == "before" else ">"
            clause = _Compiled(f"({CREATED_AT} {symbol} {self.param(node.moment, 'timestamptz')})")
        return _negation(clause) if node.op.negated else clause


def _least_count(node: EventLeaf, n: str) -> str | None:
    """How many of its events a person needs for a count leaf to hold, now or
    later (counts only fall as time passes), over the leaf's bound value `n`;
    None when none are needed."""
    if node.op.name == "gt":
        return f"{n} + 1"
    return n if node.op.name in ("gte", "eq") and node.value > 0 else None


def _joined(operator: str, tests: list[str], empty: str) -> str:
    return "(" + operator.join(tests) + ")" if tests else empty


def _negated(flip: str) -> str:
    return f"(-({flip}))"


def _negation(child: _Compiled) -> _Compiled:
    flip = None if child.flip is None else _negated(child.flip)
    return _Compiled(f"(NOT {child.test})", flip)


def _all_of(children: list[_Compiled]) -> _Compiled:
    return _combination(children, conjunction=True)


def _any_of(children: list[_Compiled]) -> _Compiled:
    return _combination(children, conjunction=False)


def _combination(children: list[_Compiled], *, conjunction: bool) -> _Compiled:
    """An `all` (conjunction) or `any` of the children. While its children agree
    (an `all` holding, an `any` failing), its flip is their earliest; while some
    decide it alone (the failing children of an `all`, the holding ones of an
    `any`), it is the latest of theirs, and never if one of them never flips:
    the LEAST (`all`) or GREATEST (`any`) of their signed flips, the children
    time never changes counting as one that never flips."""
    operator = " AND " if conjunction else " OR "
    test = _joined(operator, [child.test for child in children], str(conjunction).lower())
    flips = [child.flip for child in children if child.flip is not None]
    if len(children) == 1:
        return children[0]
    # What every child of an `all` needs, it needs; an `any` may hold without any.
    known = [child.necessary for child in children if child.necessary] if conjunction else []
    necessary = _joined(" AND ", known, "") or None
    if not flips:
        return _Compiled(test, None, necessary)
    fixed = [child.test for child in children if child.flip is None]
    if fixed:
        flips.append(
            f"CASE WHEN {_joined(operator, fixed, '')} THEN {_NEVER} ELSE {_FAILS_FOR_EVER} END"
        )
    flip = f"{'LEAST' if conjunction else 'GREATEST'}({', '.join(flips)})"
    return _Compiled(test, flip, necessary)


def compile_sql(
    condition: Condition, as_of: datetime, *, field: str = "condition", first_parameter: int = 1
) -> SqlCondition:
    """The condition as SQL whose parameters start at $first_parameter."""
    compiler = _Compiler(as_of, field, first_parameter)
    root = condition.root
    children = [
        compiler.node(child) for child in (root.children if isinstance(root, AllOf) else [root])
    ]
    # The tests of the children time never changes, and what every child needs
    # (written there only: `timed` reads it again for the users of `where`).
    fixed = [child.test for child in children if child.flip is None]
    fixed += [child.necessary for child in children if child.necessary]
    timed = [child for child in children if child.flip is not None]
    if not timed:
        return SqlCondition(
            _joined(" AND ", fixed, "true"), None, None, compiler.params, compiler.joins
        )
    time_part = _all_of(timed)
    return SqlCondition(
        _joined(" AND ", fixed, "true"),
        time_part.test,
        time_part.flip,
        compiler.params,
        compiler.joins,
        compiler.now(),
    )


def _json_text(value: Any) -> str:
    """A scalar as JSON text; numbers exactly as their decimal (jsonb numeric)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
