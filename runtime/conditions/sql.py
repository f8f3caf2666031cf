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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

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


@dataclass
class SqlCondition:
    where: str
    # The next instant time alone may change the answer for a row; None if never.
    valid_until: str | None
    params: list[Any]
    # What the query joins to `users u` (FROM users u <joins> WHERE <where>).
    joins: list[str]


@dataclass
class _Compiler:
    as_of: datetime
    request_field: str
    first: int
    params: list[Any] = field(default_factory=list)
    flips: list[str] = field(default_factory=list)
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

    def node(self, node: Node) -> str:
        if isinstance(node, AllOf):
            return (
                "(" + " AND ".join(map(self.node, node.children)) + ")" if node.children else "true"
            )
        if isinstance(node, AnyOf):
            return (
                "(" + " OR ".join(map(self.node, node.children)) + ")" if node.children else "false"
            )
        if isinstance(node, Not):
            return f"(NOT {self.node(node.child)})"
        if isinstance(node, SegmentRef):
            return self.segment(node)
        if isinstance(node, AttributeLeaf):
            return self.attribute(node)
        if isinstance(node, StageLeaf):
            clause = f"{STAGE} = ANY({self.param(list(node.stages), 'text[]')})"
            return f"(NOT {clause})" if node.negated else f"({clause})"
        if isinstance(node, StageAgeLeaf):
            return self.stage_age(node)
        if isinstance(node, CreatedAtLeaf):
            return self.created_at(node)
        return self.refuse(node, "event_type leaves are evaluated per event and cannot run in SQL")

    def refuse(self, node: EventTypeLeaf | AttributeLeaf | SegmentRef, message: str) -> str:
        at = f"{self.request_field}.{node.location}" if node.location else self.request_field
        raise InvalidArgument.field(at, message)

    def segment(self, node: SegmentRef) -> str:
        if node.condition is None:
            return self.refuse(node, "in_segment must be resolved before it runs in SQL")
        inner = self.node(node.condition.root)
        if not node.stages:
            return inner
        return f"({STAGE} = ANY({self.param(list(node.stages), 'text[]')}) AND {inner})"

    def attribute(self, node: AttributeLeaf) -> str:
        if node.source != "user" or node.op.change:
            return self.refuse(node, "event and change leaves are evaluated per event, not in SQL")
        clause = self.positive(node)
        return f"(NOT {clause})" if node.op.negated else clause

    def positive(self, node: AttributeLeaf) -> str:
        op, value, keys = node.op.positive, node.value, node.keys
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
        if op == "within_last":
            return self.window(self.moment(keys, value), value)
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

    def window(self, moment: str, duration: timedelta) -> str:
        """`moment` within [as_of - duration, as_of]; records when that flips."""
        now = self.now()
        since = self.param(self.as_of - duration, "timestamptz")
        self.flips.append(
            f"CASE WHEN {moment} > {now} THEN {moment}"
            f" WHEN {moment} >= {since} THEN {moment} + {self.micros(duration + MICROSECOND)} END"
        )
        # A range, not BETWEEN, which would evaluate the moment twice.
        return f"coalesce(tstzrange({since}, {now}, '[]') @> {moment}, false)"

    def stage_age(self, node: StageAgeLeaf) -> str:
        if STAGE_ENTRY_JOIN not in self.joins:
            self.joins.append(STAGE_ENTRY_JOIN)
        now = self.now()
        threshold = f"({STAGE_ENTERED_AT} + {self.micros(node.duration)})"
        if node.op in ("gt", "lte"):
            self.flips.append(
                f"CASE WHEN {now} <= {threshold} THEN {threshold} + interval '1 microsecond' END"
            )
        else:
            self.flips.append(f"CASE WHEN {now} < {threshold} THEN {threshold} END")
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[node.op]
        return f"coalesce({now} {symbol} {threshold}, false)"

    def created_at(self, node: CreatedAtLeaf) -> str:
        if node.duration is not None:
            clause = self.window(CREATED_AT, node.duration)
        else:
            symbol = "<" if node.op.name == "before" else ">"
            clause = f"({CREATED_AT} {symbol} {self.param(node.moment, 'timestamptz')})"
        return f"(NOT {clause})" if node.op.negated else clause


def compile_sql(
    condition: Condition, as_of: datetime, *, field: str = "condition", first_parameter: int = 1
) -> SqlCondition:
    """The condition as a WHERE clause whose parameters start at $first_parameter."""
    compiler = _Compiler(as_of, field, first_parameter)
    where = compiler.node(condition.root)
    flips = compiler.flips
    valid_until = None
    if flips:
        valid_until = flips[0] if len(flips) == 1 else f"LEAST({', '.join(flips)})"
    return SqlCondition(where, valid_until, compiler.params, compiler.joins)


def _json_text(value: Any) -> str:
    """A scalar as JSON text; numbers exactly as their decimal (jsonb numeric)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
