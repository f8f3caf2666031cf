"""The compiler to PostgreSQL: a WHERE clause over the users service's tables.

The clause reads `u.attributes`, `u.current_lifecycle_stage`, `u.created_at`
of `users u` and the lateral subqueries it lists in `joins`: the moment a
user entered their stage, and each timestamp attribute a time window reads,
parsed once per user by `condition_timestamp` (users migration 0002) for both
the test and the moment it flips. Every value is a bind parameter, attribute
paths included (as text[]). Every leaf is two-valued (never NULL), so `not` is
SQL's NOT.

Equality, `in` and the array operators are containment (`@>`), which the GIN
index on users.attributes serves; an `in` is an OR of containments, which the
planner turns into a BitmapOr of index scans. Other leaves are filters.

Each node that time alone may change also compiles to its next flip: the
earliest moment after `as_of` at which its answer may change, 'infinity' when
never. A leaf's is exact; `all` and `any` combine their children's by what each
answer needs (an `all` that fails enters no earlier than the latest entry of
its failing children, and never if one of them never enters; it leaves at its
first child's exit; `any` the other way round), so the root's flip is a lower
bound of the moment its answer changes, for users who match (they leave) and
users who do not (they enter).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from runtime.conditions.model import (
    AllOf,
    AnyOf,
    AttributeLeaf,
    Condition,
    CreatedAtLeaf,
    EventTypeLeaf,
    Kind,
    Node,
    Not,
    SegmentRef,
    StageAgeLeaf,
    StageLeaf,
)
from runtime.conditions.values import MICROSECOND
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


_NEVER = "'infinity'::timestamptz"
_PAST = "'-infinity'::timestamptz"


@dataclass
class SqlCondition:
    """The condition split in two: `where`, the part time never changes (the
    root's children that read no time: "true" if none), which every user who
    matches now or may match later satisfies, and `timed`, the rest, which holds
    for the users of `where` who match now (None when the condition reads no time)."""

    where: str
    timed: str | None
    # For a user of `where`: the next instant time alone may change whether they
    # match (see the module); NULL if never. None when the condition reads no time.
    valid_until: str | None
    params: list[Any]
    # What the query joins to `users u` (FROM users u <joins> WHERE <where>).
    joins: list[str]

    @property
    def matches(self) -> str:
        return self.where if self.timed is None else f"{self.where} AND {self.timed}"


@dataclass(frozen=True)
class _Compiled:
    test: str
    # The node's next flip ('infinity': never); None for a node time never changes.
    flip: str | None = None


@dataclass
class _Compiler:
    as_of: datetime
    request_field: str
    first: int
    params: list[Any] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    moments: dict[tuple[str, ...], str] = field(default_factory=dict)
    _as_of_param: str = ""

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
            child = self.node(node.child)
            return _Compiled(f"(NOT {child.test})", child.flip)
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
        if node.source != "user" or node.op.change:
            self.refuse(node, "event and change leaves are evaluated per event, not in SQL")
        clause = self.positive(node)
        return _Compiled(f"(NOT {clause.test})" if node.op.negated else clause.test, clause.flip)

    def positive(self, node: AttributeLeaf) -> _Compiled:
        op, value, keys = node.op.positive, node.value, node.keys
        if op == "within_last":
            return self.window(self.moment(keys, value), value)
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
        found = f"({ATTRIBUTES} #> {self.param(list(keys), 'text[]')})"
        if op == "exists":
            return f"coalesce(jsonb_typeof({found}) <> 'null', false)"
        if node.op.kind in (Kind.NUMBER, Kind.RANGE):
            return self.numeric(op, found, value)
        if node.op.kind in (Kind.TEXT, Kind.PATTERN):
            return self.text(op, found, value, node.ci)
        moment = f"condition_timestamp({found} #>> '{{}}')"
        limit = self.param(value, "timestamptz")
        return f"coalesce({moment} {'<' if op == 'before' else '>'} {limit}, false)"

    def moment(self, keys: tuple[str, ...], window: timedelta) -> str:
        """A timestamp attribute a window reads, parsed once per user in a lateral
        subquery (OFFSET 0 keeps the planner from copying the parse into each place
        that reads it), and only when it may matter: text whose date is two days
        before the window's start or earlier is, if a timestamp at all, before the
        window, offsets (at most 14:59) included, and can never enter it; NULL says
        the same for it. Parsing is what a window costs; most texts skip it."""
        oldest = (self.as_of - window - timedelta(days=1)).astimezone(UTC).date().isoformat()
        alias = self.moments.get((*keys, oldest))
        if alias is None:
            alias = f"moment_{len(self.moments)}"
            self.moments[(*keys, oldest)] = alias
            text = f"({ATTRIBUTES} #>> {self.param(list(keys), 'text[]')})"
            self.joins.append(
                f'CROSS JOIN LATERAL (SELECT CASE WHEN {text} COLLATE "C" >='
                f" {self.param(oldest, 'text')} THEN condition_timestamp({text}) END"
                f" AS at OFFSET 0) {alias}"
            )
        return f"{alias}.at"

    def contains(self, keys: tuple[str, ...], leaf_json: str) -> str:
        document = leaf_json
        for key in reversed(keys):
            document = "{" + json.dumps(key) + ":" + document + "}"
        return f"({ATTRIBUTES} @> {self.param(document, 'text::jsonb')})"

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
        it is in the future, leaves it `duration` after it."""
        now = self.now()
        since = self.param(self.as_of - duration, "timestamptz")
        flip = (
            f"CASE WHEN {moment} > {now} THEN {moment}"
            f" WHEN {moment} >= {since} THEN {moment} + {self.micros(duration + MICROSECOND)}"
            f" ELSE {_NEVER} END"
        )
        # A range, not BETWEEN, which would evaluate the moment twice.
        return _Compiled(f"coalesce(tstzrange({since}, {now}, '[]') @> {moment}, false)", flip)

    def stage_age(self, node: StageAgeLeaf) -> _Compiled:
        if STAGE_ENTRY_JOIN not in self.joins:
            self.joins.append(STAGE_ENTRY_JOIN)
        now = self.now()
        threshold = f"({STAGE_ENTERED_AT} + {self.micros(node.duration)})"
        # Without a recorded entry the threshold is NULL: never true, never flips.
        if node.op in ("gt", "lte"):
            flip = (
                f"CASE WHEN {now} <= {threshold} THEN {threshold} + interval '1 microsecond'"
                f" ELSE {_NEVER} END"
            )
        else:
            flip = f"CASE WHEN {now} < {threshold} THEN {threshold} ELSE {_NEVER} END"
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[node.op]
        return _Compiled(f"coalesce({now} {symbol} {threshold}, false)", flip)

    def created_at(self, node: CreatedAtLeaf) -> _Compiled:
        if node.duration is not None:
            clause = self.window(CREATED_AT, node.duration)
        else:
            symbol = "<" if node.op.name == "before" else ">"
            clause = _Compiled(f"({CREATED_AT} {symbol} {self.param(node.moment, 'timestamptz')})")
        return _Compiled(f"(NOT {clause.test})" if node.op.negated else clause.test, clause.flip)


def _joined(operator: str, tests: list[str], empty: str) -> str:
    return "(" + operator.join(tests) + ")" if tests else empty


def _extreme(function: str, moments: list[str]) -> str:
    return moments[0] if len(moments) == 1 else f"{function}({', '.join(moments)})"


def _all_of(children: list[_Compiled]) -> _Compiled:
    return _combination(children, conjunction=True)


def _any_of(children: list[_Compiled]) -> _Compiled:
    return _combination(children, conjunction=False)


def _combination(children: list[_Compiled], *, conjunction: bool) -> _Compiled:
    """An `all` (conjunction) or `any` of the children. While its children agree
    (an `all` holding, an `any` failing), its flip is their earliest; while some
    decide it alone (the failing children of an `all`, the holding ones of an
    `any`), it is the latest of theirs, and never if one of them never flips."""
    operator = " AND " if conjunction else " OR "
    test = _joined(operator, [child.test for child in children], str(conjunction).lower())
    timed = [child for child in children if child.flip is not None]
    if not timed:
        return _Compiled(test)
    if len(children) == 1:
        return children[0]
    deciding = "NOT " if conjunction else ""
    lasts = [f"CASE WHEN {deciding}{c.test} THEN {c.flip} ELSE {_PAST} END" for c in timed]
    fixed = [child.test for child in children if child.flip is None]
    if fixed:
        lasts.append(
            f"CASE WHEN {deciding}{_joined(operator, fixed, '')} THEN {_NEVER} ELSE {_PAST} END"
        )
    firsts = _extreme("LEAST", [child.flip for child in timed if child.flip is not None])
    flip = f"CASE WHEN {deciding}{test} THEN {_extreme('GREATEST', lasts)} ELSE {firsts} END"
    return _Compiled(test, flip)


def compile_sql(
    condition: Condition, as_of: datetime, *, field: str = "condition", first_parameter: int = 1
) -> SqlCondition:
    """The condition as SQL whose parameters start at $first_parameter."""
    compiler = _Compiler(as_of, field, first_parameter)
    root = condition.root
    children = [
        compiler.node(child) for child in (root.children if isinstance(root, AllOf) else [root])
    ]
    where = _joined(" AND ", [c.test for c in children if c.flip is None], "true")
    timed = [child for child in children if child.flip is not None]
    if not timed:
        return SqlCondition(where, None, None, compiler.params, compiler.joins)
    time_part = _all_of(timed)
    valid_until = f"NULLIF({time_part.flip}, {_NEVER})"
    return SqlCondition(where, time_part.test, valid_until, compiler.params, compiler.joins)


def _json_text(value: Any) -> str:
    """A scalar as JSON text; numbers exactly as their decimal (jsonb numeric)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
