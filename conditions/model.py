"""The condition language's syntax tree (docs/conditions.md is its reference).

A condition is parsed once into these nodes; the Python evaluator and the SQL
compiler both read them. Every negative operator is represented as its
positive operator with `negated` set, so "each negative operator is exactly
the negation of its positive one" holds by construction in both engines.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

VERSION = 1


class Kind(Enum):
    """What an operator's `value` is."""

    NONE = "none"
    SCALAR = "scalar"
    SCALARS = "scalars"
    NUMBER = "number"
    RANGE = "range"
    TEXT = "text"
    PATTERN = "pattern"
    TIMESTAMP = "timestamp"
    DURATION = "duration"


@dataclass(frozen=True)
class Operator:
    name: str
    # The positive operator this one is (itself) or negates.
    positive: str
    kind: Kind
    # Accepts `ci` (ASCII case-insensitive matching).
    ci: bool = False
    # Reads an attribute change (triggers only).
    change: bool = False

    @property
    def negated(self) -> bool:
        return self.name != self.positive


def _pair(positive: str, negative: str, kind: Kind, ci: bool = False) -> list[Operator]:
    return [Operator(positive, positive, kind, ci), Operator(negative, positive, kind, ci)]


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in [
        *_pair("eq", "neq", Kind.SCALAR),
        *_pair("in", "not_in", Kind.SCALARS),
        *_pair("exists", "not_exists", Kind.NONE),
        Operator("gt", "gt", Kind.NUMBER),
        Operator("gte", "gte", Kind.NUMBER),
        Operator("lt", "lt", Kind.NUMBER),
        Operator("lte", "lte", Kind.NUMBER),
        *_pair("between", "not_between", Kind.RANGE),
        *_pair("contains", "not_contains", Kind.TEXT, ci=True),
        Operator("starts_with", "starts_with", Kind.TEXT, ci=True),
        Operator("ends_with", "ends_with", Kind.TEXT, ci=True),
        *_pair("regex", "not_regex", Kind.PATTERN, ci=True),
        Operator("has", "has", Kind.SCALAR),
        Operator("has_all", "has_all", Kind.SCALARS),
        *_pair("has_any", "has_none", Kind.SCALARS),
        Operator("before", "before", Kind.TIMESTAMP),
        Operator("after", "after", Kind.TIMESTAMP),
        *_pair("within_last", "not_within_last", Kind.DURATION),
        Operator("changed", "changed", Kind.NONE, change=True),
        Operator("changed_to", "changed_to", Kind.SCALAR, change=True),
        Operator("changed_from", "changed_from", Kind.SCALAR, change=True),
    ]
}
STAGE_OPERATORS = ("eq", "neq", "in", "not_in")
STAGE_AGE_OPERATORS = ("gt", "gte", "lt", "lte")
CREATED_AT_OPERATORS = ("before", "after", "within_last", "not_within_last")
EVENT_TYPE_OPERATORS = ("eq", "neq", "in", "not_in", "starts_with")
COUNT_OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte")
EVENT_TIME_OPERATORS = CREATED_AT_OPERATORS
EVENT_MEASURES = ("count", "first", "last")
MAX_EVENT_COUNT = 10000
# The longest window an event leaf may look back: the users service keeps each
# person's events at least this long (LIFECYCLE_USERS_EVENT_RETENTION_DAYS).
EVENT_RETENTION = timedelta(days=400)


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 100
    max_depth: int = 10
    max_list: int = 1000
    max_string: int = 1024
    max_path_keys: int = 8


# What an author may write, and what a condition may become once the segments
# it references (in_segment) are inlined: no deeper than a request to the users
# service carries it (protobuf decoders refuse more than 100 nested messages; a
# Struct nests five for each level of all and any, eight for a stage list).
AUTHORED = Limits()
EXPANDED = Limits(max_nodes=1000, max_depth=19)


@dataclass(frozen=True)
class Leaf:
    # Where the leaf sits, e.g. "all[1].any[0]" ("" for the root).
    location: str
    # The leaf as written (shown by explanations).
    source_json: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class AttributeLeaf(Leaf):
    # "user" (the user's attributes) or "event" (the event's data).
    source: str
    keys: tuple[str, ...]
    op: Operator
    # Normalised: a scalar, a tuple of scalars, (low, high), a pattern string,
    # a datetime or a timedelta; numbers are int or Decimal.
    value: Any
    ci: bool


@dataclass(frozen=True)
class StageLeaf(Leaf):
    negated: bool
    stages: tuple[str, ...]


@dataclass(frozen=True)
class StageAgeLeaf(Leaf):
    op: str
    duration: timedelta


@dataclass(frozen=True)
class CreatedAtLeaf(Leaf):
    op: Operator
    moment: datetime | None
    duration: timedelta | None


@dataclass(frozen=True)
class EventTypeLeaf(Leaf):
    negated: bool
    # "eq"/"in" compare with `values`; "starts_with" tests its one prefix.
    prefix: bool
    values: tuple[str, ...]


@dataclass(frozen=True)
class EventAnchor:
    """The person's own moment an anchored window is measured from: a timestamp
    attribute at `keys`, or, with no keys, when the user was created; the window
    is the `span` after it (or before it, `before`), both ends included."""

    keys: tuple[str, ...]
    span: timedelta
    before: bool


@dataclass(frozen=True)
class EventWindow:
    """Which of a person's events a count reads, besides those not yet happened:
    the last `last` before as_of, those from `since` (to `until`, inclusive), or
    those in the span around the person's `anchor` moment."""

    last: timedelta | None = None
    since: datetime | None = None
    until: datetime | None = None
    anchor: EventAnchor | None = None


@dataclass(frozen=True)
class EventLeaf(Leaf):
    """A person's tracked events of a type (or a `prefix.*` family) whose data
    match `where`: how many there are in `window` (`measure` "count", `value` an
    int), or when the first or last one happened (a datetime or a timedelta)."""

    event_type: str
    prefix: bool
    where: Node | None
    measure: str
    op: Operator
    value: Any
    window: EventWindow

    def matches_type(self, event_type: str) -> bool:
        if self.prefix:
            return event_type.startswith(self.event_type)
        return event_type == self.event_type


@dataclass(frozen=True)
class SegmentRef(Leaf):
    segment_id: uuid.UUID
    # The referenced segment, once resolved: its stages and condition.
    stages: tuple[str, ...] = ()
    condition: Condition | None = None


@dataclass(frozen=True)
class AllOf:
    location: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    location: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    location: str
    child: Node


Node = (
    AllOf
    | AnyOf
    | Not
    | AttributeLeaf
    | StageLeaf
    | StageAgeLeaf
    | CreatedAtLeaf
    | EventTypeLeaf
    | EventLeaf
    | SegmentRef
)


@dataclass(frozen=True)
class Condition:
    root: Node
    source_json: dict[str, Any] = field(compare=False)

    def nodes(self) -> Iterator[Node]:
        """Every node, depth first, resolved segment references included."""
        stack: list[Node] = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, AllOf | AnyOf):
                stack.extend(reversed(node.children))
            elif isinstance(node, Not):
                stack.append(node.child)
            elif isinstance(node, SegmentRef) and node.condition is not None:
                stack.append(node.condition.root)

    def event_leaves(self) -> list[EventLeaf]:
        return [node for node in self.nodes() if isinstance(node, EventLeaf)]

    def segment_ids(self) -> set[uuid.UUID]:
        return {n.segment_id for n in self.nodes() if isinstance(n, SegmentRef)}

    def expanded_json(self) -> dict[str, Any]:
        """The condition as JSON with every resolved in_segment replaced by the
        referenced segment's stages and condition: what the users service runs."""
        return {"v": VERSION, **_node_json(self.root)}

    def dependencies(self) -> Dependencies:
        """What a change must touch for this condition's answer to change."""
        keys: set[str] = set()
        events: set[str] = set()
        stage = False
        for node in self.nodes():
            if isinstance(node, EventLeaf):
                events.add(node.event_type + ("*" if node.prefix else ""))
                # An anchored window moves with its attribute.
                anchor = node.window.anchor
                if anchor is not None and anchor.keys:
                    keys.add(anchor.keys[0])
            elif isinstance(node, AttributeLeaf) and node.source == "user":
                keys.add(node.keys[0])
            elif isinstance(node, StageLeaf | StageAgeLeaf) or (
                isinstance(node, SegmentRef) and node.stages
            ):
                stage = True
        return Dependencies(frozenset(keys), stage, frozenset(events))


@dataclass(frozen=True)
class Dependencies:
    # Top-level user attribute keys the condition reads.
    attribute_keys: frozenset[str]
    # Whether it reads the stage (or the time in it).
    stage: bool
    # The event types its event leaves read: exact, or a prefix ending in "*".
    event_types: frozenset[str] = frozenset()

    def reads_event(self, event_type: str) -> bool:
        return any(
            event_type.startswith(kind[:-1]) if kind.endswith("*") else event_type == kind
            for kind in self.event_types
        )


def _node_json(node: Node) -> dict[str, Any]:
    if isinstance(node, AllOf):
        return {"all": [_node_json(child) for child in node.children]}
    if isinstance(node, AnyOf):
        return {"any": [_node_json(child) for child in node.children]}
    if isinstance(node, Not):
        return {"not": _node_json(node.child)}
    if isinstance(node, SegmentRef) and node.condition is not None:
        inner = _node_json(node.condition.root)
        if not node.stages:
            return inner
        return {"all": [{"stage": {"op": "in", "value": list(node.stages)}}, inner]}
    return node.source_json
