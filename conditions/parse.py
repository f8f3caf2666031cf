"""Validation of a condition's JSON into its syntax tree.

Every problem is reported at once, each under the path of the offending part
inside the condition, prefixed with the request field that carried it:
`segment.conditions.all[1].op`. A condition that parses runs in both engines.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from conditions.model import (
    AUTHORED,
    COUNT_OPERATORS,
    CREATED_AT_OPERATORS,
    EVENT_MEASURES,
    EVENT_RETENTION,
    EVENT_TYPE_OPERATORS,
    EXPANDED,
    MAX_EVENT_COUNT,
    OPERATORS,
    STAGE_AGE_OPERATORS,
    STAGE_OPERATORS,
    VERSION,
    AllOf,
    AnyOf,
    AttributeLeaf,
    Condition,
    CreatedAtLeaf,
    EventAnchor,
    EventLeaf,
    EventTypeLeaf,
    EventWindow,
    Kind,
    Limits,
    Node,
    Not,
    Operator,
    SegmentRef,
    StageAgeLeaf,
    StageLeaf,
)
from conditions.patterns import PatternError, check_pattern, fold
from conditions.values import MAX_DURATION, number, parse_duration, parse_timestamp
from runtime.errors import Violations
from runtime.stages import STAGES

# Path keys are bound as text[]; a key starting with a digit or "-" would index
# arrays in PostgreSQL's #> and not in Python, so keys start with a letter or _.
PATH_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
MAX_TEXT_LENGTH = 1024
_NODE_KEYS = (
    "all", "any", "not", "attr", "stage", "stage_age", "created_at", "event_type", "event",
)  # fmt: skip
# What an event leaf's `where` may hold: nodes over the event's data.
_EVENT_DATA_KEYS = ("all", "any", "not", "attr")
_NODE_KEYS_WITH_SEGMENTS = (*_NODE_KEYS, "in_segment")
_LEAF_KEYS = {"attr", "op", "value", "ci", "src"}


@dataclass(frozen=True)
class Scope:
    """What a condition may read where it is used."""

    # The event's type and data, and attribute changes: evaluated per event.
    events: bool = False
    # Membership in other segments (in_segment), resolved by the segments service.
    segments: bool = False
    # Why an in_segment leaf is refused where `segments` is false.
    no_segments: str = "in_segment is resolved by the segments service, not here"
    limits: Limits = AUTHORED


SEGMENT = Scope(segments=True)
# The triggers service could not follow a change of a referenced segment's
# definition; the segments service sends its members' entries as events.
TRIGGER = Scope(
    events=True,
    no_segments="in_segment is not available in triggers: trigger on segment.entered"
    " with a condition on the event's segment_id instead",
)
# What the users service runs in SQL: user leaves only, references inlined.
SQL = Scope(limits=EXPANDED)


def parse_condition(data: Any, field: str, scope: Scope) -> Condition:
    """The condition's tree; InvalidArgument naming every bad part otherwise."""
    violations = Violations()
    condition = _Parser(field, scope, violations).condition(data)
    violations.check()
    assert condition is not None
    return condition


def _join(location: str, part: str) -> str:
    if not location:
        return part
    return f"{location}{part}" if part.startswith("[") else f"{location}.{part}"


class _Parser:
    def __init__(self, field: str, scope: Scope, violations: Violations) -> None:
        self.field = field
        self.scope = scope
        self.violations = violations
        self.nodes = 0
        # Inside an event leaf's `where`: nodes read the event's data.
        self.event_data = False
        # Each list of allowed values, by where it was said.
        self.listed: dict[tuple[str, ...], str] = {}

    def add(self, location: str, message: str) -> None:
        self.violations.add(_join(self.field, location) if location else self.field, message)

    def one_of(self, location: str, allowed: tuple[str, ...]) -> None:
        """A value outside `allowed`; the list is said once, at its first violation."""
        first = self.listed.setdefault(allowed, _join(self.field, location))
        if first == _join(self.field, location):
            self.add(location, f"must be one of {', '.join(allowed)}")
        else:
            self.add(location, f"must be one of the values listed for {first}")

    def condition(self, data: Any) -> Condition | None:
        if not isinstance(data, dict):
            self.add("", "must be an object")
            return None
        version = data.get("v")
        if version is None:
            self.add("v", f"is required: the language version, {VERSION}")
        elif type(version) is not int or version != VERSION:
            self.add("v", f"must be {VERSION}, the only version of the language")
        body = {key: value for key, value in data.items() if key != "v"}
        root = self.node(body, "", depth=1)
        if self.nodes > self.scope.limits.max_nodes:
            self.add("", f"has {self.nodes} nodes; at most {self.scope.limits.max_nodes} allowed")
        if root is None or self.violations.items:
            return None
        return Condition(root, data)

    def node(self, data: Any, location: str, depth: int) -> Node | None:
        self.nodes += 1
        if depth > self.scope.limits.max_depth:
            self.add(location, f"is nested deeper than {self.scope.limits.max_depth} levels")
            return None
        if not isinstance(data, dict):
            self.add(location, "must be an object")
            return None
        allowed: tuple[str, ...] = _NODE_KEYS_WITH_SEGMENTS if self.scope.segments else _NODE_KEYS
        if self.event_data:
            allowed = _EVENT_DATA_KEYS
        elif "in_segment" in data and not self.scope.segments:
            self.add(_join(location, "in_segment"), self.scope.no_segments)
            return None
        kinds = [key for key in allowed if key in data]
        if len(kinds) != 1:
            found = f"; it has {', '.join(kinds)}" if kinds else ""
            self.add(location, f"must be a node with exactly one of {', '.join(allowed)}{found}")
            return None
        kind = kinds[0]
        if kind == "attr":
            return self.attribute(data, location)
        if kind == "event":
            return self.event(data, location, depth)
        if kind not in ("all", "any") and len(data) != 1:
            extra = sorted(set(data) - {kind})
            self.add(location, f"has unknown keys {extra}")
            return None
        if kind in ("all", "any"):
            return self.combination(data, kind, location, depth)
        if kind == "not":
            child = self.node(data["not"], _join(location, "not"), depth + 1)
            return Not(location, child) if child is not None else None
        return self.special_leaf(kind, data, location)

    def combination(
        self, data: dict[str, Any], kind: str, location: str, depth: int
    ) -> Node | None:
        if len(data) != 1:
            self.add(location, f"has unknown keys {sorted(set(data) - {kind})}")
        items = data[kind]
        if not isinstance(items, list):
            self.add(_join(location, kind), "must be a list of nodes")
            return None
        children = [
            self.node(item, _join(location, f"{kind}[{index}]"), depth + 1)
            for index, item in enumerate(items)
        ]
        if any(child is None for child in children):
            return None
        nodes = tuple(child for child in children if child is not None)
        return AllOf(location, nodes) if kind == "all" else AnyOf(location, nodes)

    def special_leaf(self, kind: str, data: dict[str, Any], location: str) -> Node | None:
        if kind == "in_segment":
            return self.segment_reference(data, location)
        if kind == "event_type" and not self.scope.events:
            self.add(location, "event_type leaves only make sense per event (triggers)")
            return None
        spec = data[kind]
        at = _join(location, kind)
        if not isinstance(spec, dict) or set(spec) - {"op", "value"}:
            self.add(at, 'must be {"op": ..., "value": ...}')
            return None
        build = _SPECIAL_LEAVES[kind]
        return build(self, spec, at, location, data)

    def operator_name(self, spec: dict[str, Any], at: str, allowed: tuple[str, ...]) -> str | None:
        op = spec.get("op")
        if op not in allowed:
            self.one_of(_join(at, "op"), allowed)
            return None
        return str(op)

    def stage(
        self, spec: dict[str, Any], at: str, location: str, data: dict[str, Any]
    ) -> Node | None:
        op = self.operator_name(spec, at, STAGE_OPERATORS)
        if op is None:
            return None
        raw = spec.get("value")
        values = raw if op in ("in", "not_in") else [raw]
        if not isinstance(values, list) or not values or not all(v in STAGES for v in values):
            shape = "a list of" if op in ("in", "not_in") else "one of"
            self.add(_join(at, "value"), f"must be {shape} {', '.join(STAGES)}")
            return None
        return StageLeaf(location, data, op in ("neq", "not_in"), tuple(values))

    def stage_age(
        self, spec: dict[str, Any], at: str, location: str, data: dict[str, Any]
    ) -> Node | None:
        op = self.operator_name(spec, at, STAGE_AGE_OPERATORS)
        duration = self.duration(spec.get("value"), _join(at, "value"))
        if op is None or duration is None:
            return None
        return StageAgeLeaf(location, data, op, duration)

    def created_at(
        self, spec: dict[str, Any], at: str, location: str, data: dict[str, Any]
    ) -> Node | None:
        op = self.operator_name(spec, at, CREATED_AT_OPERATORS)
        if op is None:
            return None
        operator = OPERATORS[op]
        value_at = _join(at, "value")
        if operator.kind is Kind.DURATION:
            duration = self.duration(spec.get("value"), value_at)
            return CreatedAtLeaf(location, data, operator, None, duration) if duration else None
        moment = self.timestamp(spec.get("value"), value_at)
        return CreatedAtLeaf(location, data, operator, moment, None) if moment else None

    def event_type(
        self, spec: dict[str, Any], at: str, location: str, data: dict[str, Any]
    ) -> Node | None:
        op = self.operator_name(spec, at, EVENT_TYPE_OPERATORS)
        if op is None:
            return None
        raw = spec.get("value")
        values = raw if op in ("in", "not_in") else [raw]
        if (
            not isinstance(values, list)
            or not 0 < len(values) <= self.scope.limits.max_list
            or not all(isinstance(v, str) and 0 < len(v) <= 255 for v in values)
        ):
            self.add(_join(at, "value"), "must be an event type (or a list of them for in)")
            return None
        return EventTypeLeaf(
            location, data, op in ("neq", "not_in"), op == "starts_with", tuple(values)
        )

    def event(self, data: dict[str, Any], location: str, depth: int) -> Node | None:
        at = _join(location, "event")
        if len(data) != 1:
            self.add(location, f"has unknown keys {sorted(set(data) - {'event'})}")
            return None
        spec = data["event"]
        if not isinstance(spec, dict):
            self.add(at, 'must be {"type": ..., "count" | "first" | "last": ...}')
            return None
        unknown = set(spec) - {"type", "where", "window", *EVENT_MEASURES}
        measures = [key for key in EVENT_MEASURES if key in spec]
        if unknown or len(measures) != 1:
            problem = f"must have a type and exactly one of count, first, last{_unknown(unknown)}"
            self.add(at, problem)
            return None
        measure = measures[0]
        kind = self.event_kind(spec.get("type"), _join(at, "type"))
        where = self.event_where(spec, at, depth)
        window = self.event_window(spec, at, measure)
        compared = self.event_measure(spec[measure], _join(at, measure), measure)
        if kind is None or where is _INVALID or window is None or compared is None:
            return None
        op, value = compared
        return EventLeaf(location, data, *kind, where, measure, op, value, window)

    def event_kind(self, raw: Any, at: str) -> tuple[str, bool] | None:
        prefix = isinstance(raw, str) and raw.endswith(".*")
        name = raw[:-1] if prefix else raw
        if not isinstance(name, str) or not 0 < len(name) <= 255 or "*" in name:
            self.add(at, "must be an event type like purchase, or a family like billing.*")
            return None
        return name, prefix

    def event_where(self, spec: dict[str, Any], at: str, depth: int) -> Any:
        if "where" not in spec:
            return None
        self.event_data = True
        try:
            # Two levels of nesting on the wire: the leaf's object, then where's.
            where = self.node(spec["where"], _join(at, "where"), depth + 2)
        finally:
            self.event_data = False
        return _INVALID if where is None else where

    def event_window(self, spec: dict[str, Any], at: str, measure: str) -> EventWindow | None:
        if "window" not in spec:
            return EventWindow()
        at = _join(at, "window")
        raw = spec["window"]
        if measure != "count":
            self.add(at, "applies to count: first and last read every event kept")
            return None
        if isinstance(raw, dict) and "within" in raw:
            return self.anchored_window(raw, at)
        if not isinstance(raw, dict) or len(raw) != 1 or set(raw) - {"last", "since", "between"}:
            self.add(at, _WINDOW_FORMS)
            return None
        ((form, value),) = raw.items()
        at = _join(at, form)
        if form == "last":
            last = self.duration(value, at)
            if last is not None and last > EVENT_RETENTION:
                self.add(at, f"must be at most P{EVENT_RETENTION.days}D, how long events are kept")
                return None
            return EventWindow(last=last) if last is not None else None
        if form == "since":
            since = self.timestamp(value, at)
            return EventWindow(since=since) if since is not None else None
        if not isinstance(value, list) or len(value) != 2:
            self.add(at, "must be [since, until], two timestamps")
            return None
        since, until = (self.timestamp(item, f"{at}[{i}]") for i, item in enumerate(value))
        if since is None or until is None:
            return None
        if since > until:
            self.add(at, "since must not be after until")
            return None
        return EventWindow(since=since, until=until)

    def anchored_window(self, raw: dict[str, Any], at: str) -> EventWindow | None:
        """{"within": D, "after" | "before": {"attr": path} | "created_at"}."""
        sides = [side for side in ("after", "before") if side in raw]
        if len(raw) != 2 or len(sides) != 1:
            self.add(at, _WINDOW_FORMS)
            return None
        side = sides[0]
        span = self.duration(raw["within"], _join(at, "within"))
        if span is not None and span > EVENT_RETENTION:
            self.add(
                _join(at, "within"),
                f"must be at most P{EVENT_RETENTION.days}D, how long events are kept",
            )
            return None
        keys = self.anchor(raw[side], _join(at, side))
        if span is None or keys is None:
            return None
        return EventWindow(anchor=EventAnchor(keys, span, side == "before"))

    def anchor(self, raw: Any, at: str) -> tuple[str, ...] | None:
        """An anchor's attribute path, or () for the user's creation time."""
        if raw == "created_at":
            return ()
        if not isinstance(raw, dict) or set(raw) != {"attr"}:
            self.add(at, 'must be {"attr": "signup_at"} (a timestamp attribute) or "created_at"')
            return None
        return self.path(raw["attr"], _join(at, "attr"))

    def event_measure(self, spec: Any, at: str, measure: str) -> tuple[Operator, Any] | None:
        if not isinstance(spec, dict) or set(spec) != {"op", "value"}:
            self.add(at, 'must be {"op": ..., "value": ...}')
            return None
        if measure != "count":
            moment = self.created_at(spec, at, "", {})
            if not isinstance(moment, CreatedAtLeaf):
                return None
            return moment.op, moment.moment if moment.duration is None else moment.duration
        op = self.operator_name(spec, at, COUNT_OPERATORS)
        value = spec.get("value")
        if type(value) is not int or not 0 <= value <= MAX_EVENT_COUNT:
            self.add(_join(at, "value"), f"must be a whole number from 0 to {MAX_EVENT_COUNT}")
            return None
        return (OPERATORS[op], value) if op is not None else None

    def segment_reference(self, data: dict[str, Any], location: str) -> Node | None:
        if len(data) != 1:
            self.add(location, f"has unknown keys {sorted(set(data) - {'in_segment'})}")
            return None
        try:
            segment_id = uuid.UUID(str(data["in_segment"]))
        except ValueError:
            self.add(_join(location, "in_segment"), "must be a segment id (UUID)")
            return None
        return SegmentRef(location, data, segment_id)

    def attribute(self, data: dict[str, Any], location: str) -> Node | None:
        unknown = set(data) - _LEAF_KEYS
        if unknown:
            self.add(location, f"has unknown keys {sorted(unknown)}")
            return None
        source = data.get("src", "user")
        if self.event_data:
            if "src" in data:
                self.add(_join(location, "src"), "is not allowed in where: it reads event data")
                return None
            source = "event"
        if source not in ("user", "event"):
            self.add(_join(location, "src"), "must be user or event")
            return None
        if source == "event" and not (self.scope.events or self.event_data):
            self.add(_join(location, "src"), "event leaves only make sense per event (triggers)")
            return None
        keys = self.path(data["attr"], _join(location, "attr"))
        operator = self.operator(data, location)
        if keys is None or operator is None:
            return None
        ci = data.get("ci", False)
        if type(ci) is not bool or (ci and not operator.ci):
            self.add(_join(location, "ci"), "is a boolean, for text and regex operators only")
            return None
        value = self.value(operator, data, location, ci)
        if value is _INVALID:
            return None
        return AttributeLeaf(location, data, source, keys, operator, value, ci)

    def operator(self, data: dict[str, Any], location: str) -> Operator | None:
        operator = OPERATORS.get(data.get("op"))  # type: ignore[arg-type]
        at = _join(location, "op")
        if operator is None:
            self.one_of(at, tuple(OPERATORS))
            return None
        if operator.change and not self.scope.events:
            self.add(at, f"{operator.name} compares an attribute change: triggers only")
            return None
        if operator.change and (data.get("src", "user") != "user" or self.event_data):
            self.add(at, f"{operator.name} applies to user attributes")
            return None
        if operator.kind is Kind.DURATION and self.event_data:
            self.add(at, f"{operator.name} is not allowed in where: use the event leaf's window")
            return None
        return operator

    def path(self, raw: Any, at: str) -> tuple[str, ...] | None:
        keys = raw.split(".") if isinstance(raw, str) else []
        if not keys or not all(PATH_KEY.fullmatch(key) for key in keys):
            self.add(
                at,
                "must be a dotted path of keys like address.country, each starting with a"
                " letter or _ and made of letters, digits, _ and - (at most 64 characters)",
            )
            return None
        if len(keys) > self.scope.limits.max_path_keys:
            self.add(at, f"must have at most {self.scope.limits.max_path_keys} keys")
            return None
        return tuple(keys)

    def value(self, operator: Operator, data: dict[str, Any], location: str, ci: bool) -> Any:
        at = _join(location, "value")
        if operator.kind is Kind.NONE:
            if "value" in data:
                self.add(at, f"{operator.name} takes no value")
                return _INVALID
            return None
        if "value" not in data:
            self.add(at, f"is required by {operator.name}")
            return _INVALID
        raw = data["value"]
        parsed = _VALUE_PARSERS[operator.kind](self, raw, at, ci)
        return _INVALID if parsed is None else parsed

    def scalar(self, raw: Any, at: str) -> Any:
        if isinstance(raw, bool):
            return raw
        numeric = number(raw)
        if numeric is not None:
            if isinstance(numeric, Decimal) and not numeric.is_finite():
                self.add(at, "must be a finite number")
                return None
            return numeric
        if isinstance(raw, str):
            return self.text(raw, at)
        if raw is None:
            self.add(at, "must not be null: test for null with exists / not_exists")
        else:
            self.add(at, "must be a string, a number or a boolean")
        return None

    def scalars(self, raw: Any, at: str) -> tuple[Any, ...] | None:
        limit = self.scope.limits.max_list
        if not isinstance(raw, list) or not 0 < len(raw) <= limit:
            self.add(at, f"must be a list of 1 to {limit} strings, numbers or booleans")
            return None
        values = [self.scalar(item, f"{at}[{index}]") for index, item in enumerate(raw)]
        return None if any(v is None for v in values) else tuple(values)

    def number_value(self, raw: Any, at: str) -> Any:
        if isinstance(raw, bool) or number(raw) is None:
            self.add(at, "must be a number")
            return None
        return self.scalar(raw, at)

    def text(self, raw: Any, at: str) -> str | None:
        if not isinstance(raw, str) or not raw:
            self.add(at, "must be a non-empty string")
            return None
        if len(raw) > MAX_TEXT_LENGTH:
            self.add(at, f"must be at most {MAX_TEXT_LENGTH} characters")
            return None
        if "\x00" in raw:
            self.add(at, "must not contain NUL characters")
            return None
        return raw

    def pattern(self, raw: Any, at: str, ci: bool) -> str | None:
        if not isinstance(raw, str) or not raw:
            self.add(at, "must be a non-empty regular expression")
            return None
        try:
            return check_pattern(raw, ci=ci)
        except PatternError as error:
            self.add(at, f"is not a supported regular expression: {error}")
            return None

    def range(self, raw: Any, at: str) -> tuple[Any, Any] | None:
        if not isinstance(raw, list) or len(raw) != 2:
            self.add(at, "must be [low, high], two numbers")
            return None
        low, high = (self.number_value(item, f"{at}[{i}]") for i, item in enumerate(raw))
        if low is None or high is None:
            return None
        if low > high:
            self.add(at, "low must not be above high")
            return None
        return low, high

    def timestamp(self, raw: Any, at: str) -> Any:
        moment = parse_timestamp(raw)
        if moment is None:
            self.add(at, "must be a timestamp like 2024-05-01T12:00:00Z or a date like 2024-05-01")
        return moment

    def duration(self, raw: Any, at: str) -> Any:
        duration = parse_duration(raw)
        if duration is None:
            self.add(
                at,
                "must be an ISO-8601 duration of weeks, days, hours, minutes or seconds"
                " like P14D or PT12H (months and years have no fixed length)",
            )
        elif duration > MAX_DURATION:
            self.add(at, f"must be at most P{MAX_DURATION.days}D")
            return None
        return duration


_INVALID = object()
_WINDOW_FORMS = (
    'must be {"last": "P30D"}, {"since": time}, {"between": [time, time]}'
    ' or {"within": "P14D", "after" | "before": {"attr": "signup_at"} | "created_at"}'
)


def _unknown(keys: set[str]) -> str:
    return f"; unknown keys {sorted(keys)}" if keys else ""


def _folded(text: str | None, ci: bool) -> str | None:
    return fold(text) if ci and text is not None else text


_SPECIAL_LEAVES: dict[str, Callable[..., Node | None]] = {
    "stage": _Parser.stage,
    "stage_age": _Parser.stage_age,
    "created_at": _Parser.created_at,
    "event_type": _Parser.event_type,
}

_VALUE_PARSERS: dict[Kind, Callable[[_Parser, Any, str, bool], Any]] = {
    Kind.SCALAR: lambda p, raw, at, ci: p.scalar(raw, at),
    Kind.SCALARS: lambda p, raw, at, ci: p.scalars(raw, at),
    Kind.NUMBER: lambda p, raw, at, ci: p.number_value(raw, at),
    Kind.RANGE: lambda p, raw, at, ci: p.range(raw, at),
    Kind.TEXT: lambda p, raw, at, ci: _folded(p.text(raw, at), ci),
    Kind.PATTERN: lambda p, raw, at, ci: p.pattern(raw, at, ci),
    Kind.TIMESTAMP: lambda p, raw, at, ci: p.timestamp(raw, at),
    Kind.DURATION: lambda p, raw, at, ci: p.duration(raw, at),
}
