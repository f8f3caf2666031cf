"""Which events of the log an EventMatch selects, as SQL over `lifecycle_events`:
the type (exact, or a family `prefix.*`) and a condition of the shared language
on the event's data (docs/metrics.md, "Matching events").

The shared compiler (`conditions.compile_sql`) reads the users table and
refuses event leaves, so the event-data subset the analytics accept compiles
here: `all`, `any`, `not` and the attribute leaves of `DATA_OPERATORS`, with
the meaning `conditions.Evaluator` gives them (tests/metrics check one against
the other). Every value is a bind parameter; every leaf is two-valued (never
NULL), so `not` is SQL's NOT and a negative operator is NOT of its positive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from conditions.model import AllOf, AnyOf, AttributeLeaf, Node, Not
from services.metrics.analytics import EventMatch

DATA = "event_data"
# JSON values are bound as text and cast: the pool's jsonb codec would encode a
# str as a JSON string.
_COMPARISONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TEXT_PATTERNS = {"contains": "%{}%", "starts_with": "{}%", "ends_with": "%{}"}


@dataclass
class Parameters:
    """Bind parameters of a query, numbered from `first`."""

    first: int = 1
    values: list[Any] = field(default_factory=list)

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${self.first + len(self.values) - 1}::{cast}"


def match_sql(match: EventMatch, params: Parameters) -> str:
    """A boolean expression that holds for the events `match` selects."""
    if match.prefix:
        kind = f"starts_with(event_type, {params.add(match.event_type, 'text')})"
    else:
        kind = f"event_type = {params.add(match.event_type, 'text')}"
    if match.condition is None:
        return f"({kind})"
    return f"({kind} AND {_node(match.condition.root, params)})"


def type_filter(matches: list[EventMatch], params: Parameters) -> str:
    """Holds for events of any of the matches' types (their conditions aside):
    an equality on a list, or a prefix, that narrows the rows read early."""
    exact = sorted({m.event_type for m in matches if not m.prefix})
    tests = [f"event_type = ANY({params.add(exact, 'text[]')})"] if exact else []
    tests += [
        f"starts_with(event_type, {params.add(p, 'text')})"
        for p in sorted({m.event_type for m in matches if m.prefix})
    ]
    return "(" + " OR ".join(tests) + ")"


def _node(node: Node, params: Parameters) -> str:
    if isinstance(node, AllOf | AnyOf):
        empty = "true" if isinstance(node, AllOf) else "false"
        joiner = " AND " if isinstance(node, AllOf) else " OR "
        return "(" + (joiner.join(_node(c, params) for c in node.children) or empty) + ")"
    if isinstance(node, Not):
        return f"(NOT {_node(node.child, params)})"
    # The request's parsing lets attribute leaves of the event only through.
    assert isinstance(node, AttributeLeaf)
    test = _positive(node, params)
    return f"(NOT {test})" if node.op.negated else test


def _positive(node: AttributeLeaf, params: Parameters) -> str:
    op, value = node.op.positive, node.value
    found = f"({DATA} #> {params.add(list(node.keys), 'text[]')})"
    if op == "exists":
        return f"coalesce(jsonb_typeof({found}) <> 'null', false)"
    if op == "eq":
        return f"coalesce({found} = {params.add(_json(value), 'text::jsonb')}, false)"
    if op == "in":
        listed = params.add([_json(v) for v in value], "text[]::jsonb[]")
        return f"coalesce({found} = ANY({listed}), false)"
    if op in _TEXT_PATTERNS:
        return _text(op, found, value, node.ci, params)
    # A type guard first: jsonb orders across types ('true' > '30').
    guard = f"jsonb_typeof({found}) = 'number'"
    if op == "between":
        low, high = (params.add(_json(v), "text::jsonb") for v in value)
        return f"coalesce({guard} AND {found} >= {low} AND {found} <= {high}, false)"
    limit = params.add(_json(value), "text::jsonb")
    return f"coalesce({guard} AND {found} {_COMPARISONS[op]} {limit}, false)"


def _text(op: str, found: str, value: str, ci: bool, params: Parameters) -> str:
    subject = f"({found} #>> '{{}}')"
    if ci:
        # The C collation's lower() folds ASCII letters only, as conditions' fold().
        subject = f'lower({subject} COLLATE "C")'
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = params.add(_TEXT_PATTERNS[op].format(escaped), "text")
    return f"coalesce(jsonb_typeof({found}) = 'string' AND {subject} LIKE {pattern}, false)"


def _json(value: Any) -> str:
    """A scalar as JSON text, numbers exactly as their decimal."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
