"""The JSON Schema (draft 2020-12) of the condition language, version 1.

It describes the shape of a condition for editors and clients. The validator
(conditions.parse) is the authority and checks what a schema cannot
say: the regex subset, calendar days, low <= high, node and depth limits, and
which leaves a context allows (event leaves and changes: triggers only;
in_segment: resolved by the segments service). Print it with
`python -m conditions.schema`.
"""

from __future__ import annotations

import json
from typing import Any

from conditions.model import (
    AUTHORED,
    COUNT_OPERATORS,
    CREATED_AT_OPERATORS,
    EVENT_MEASURES,
    EVENT_TIME_OPERATORS,
    EVENT_TYPE_OPERATORS,
    MAX_EVENT_COUNT,
    OPERATORS,
    STAGE_AGE_OPERATORS,
    STAGE_OPERATORS,
    VERSION,
    Kind,
)
from conditions.parse import MAX_TEXT_LENGTH, PATH_KEY
from conditions.patterns import MAX_PATTERN_LENGTH
from conditions.values import TIMESTAMP_PATTERN
from runtime.stages import STAGES

_DURATION_PATTERN = (
    r"^P(?:[0-9]+W|(?:[0-9]+D)?(?:T(?=[0-9])(?:[0-9]+H)?(?:[0-9]+M)?"
    r"(?:[0-9]+(?:\.[0-9]{1,6})?S)?)?)$"
)
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH}
_SCALAR = {"oneOf": [_TEXT, {"type": "number"}, {"type": "boolean"}]}
_SCALARS = {"type": "array", "items": _SCALAR, "minItems": 1, "maxItems": AUTHORED.max_list}
_TIMESTAMP = {"type": "string", "pattern": TIMESTAMP_PATTERN}
_DURATION = {"type": "string", "pattern": _DURATION_PATTERN}
_VALUES: dict[Kind, dict[str, Any]] = {
    Kind.SCALAR: _SCALAR,
    Kind.SCALARS: _SCALARS,
    Kind.NUMBER: {"type": "number"},
    Kind.RANGE: {
        "type": "array",
        "prefixItems": [{"type": "number"}, {"type": "number"}],
        "minItems": 2,
        "maxItems": 2,
    },
    Kind.TEXT: _TEXT,
    Kind.PATTERN: {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_LENGTH},
    Kind.TIMESTAMP: _TIMESTAMP,
    Kind.DURATION: _DURATION,
}
_PATH = rf"^{PATH_KEY.pattern}(\.{PATH_KEY.pattern}){{0,{AUTHORED.max_path_keys - 1}}}$"


def _object(properties: dict[str, Any], required: list[str], root: bool) -> dict[str, Any]:
    if root:
        properties = {"v": {"const": VERSION}, **properties}
        required = ["v", *required]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _chain(
    cases: list[tuple[dict[str, Any], dict[str, Any]]], otherwise: dict[str, Any]
) -> dict[str, Any]:
    """if/then/else in order: a validator checks one branch, where oneOf would check all."""
    schema = otherwise
    for condition, then in reversed(cases):
        schema = {"if": condition, "then": then, "else": schema}
    return schema


def _value_rules() -> dict[str, Any]:
    """What `value` and `ci` must be, by operator."""
    cases = []
    for kind in Kind:
        for ci in (False, True):
            ops = [op.name for op in OPERATORS.values() if op.kind is kind and op.ci == ci]
            if not ops:
                continue
            rule: dict[str, Any] = (
                {"not": {"required": ["value"]}}
                if kind is Kind.NONE
                else {"required": ["value"], "properties": {"value": _VALUES[kind]}}
            )
            if not ci:
                rule = {"allOf": [rule, {"not": {"required": ["ci"]}}]}
            cases.append(({"required": ["op"], "properties": {"op": {"enum": ops}}}, rule))
    return _chain(cases, {})


def _attribute_leaf(root: bool) -> dict[str, Any]:
    leaf = _object(
        {
            "attr": {"type": "string", "pattern": _PATH},
            "src": {"enum": ["user", "event"]},
            "op": {"enum": list(OPERATORS)},
            "value": {},
            "ci": {"type": "boolean"},
        },
        ["attr", "op"],
        root,
    )
    return {**leaf, "allOf": [_value_rules()]}


def _special(name: str, ops: tuple[str, ...], value: dict[str, Any], root: bool) -> dict[str, Any]:
    spec = _object({"op": {"enum": list(ops)}, "value": value}, ["op", "value"], root=False)
    return _object({name: spec}, [name], root)


def _event_leaf(root: bool) -> dict[str, Any]:
    """A person's events: a count in a window, or the first or last time."""
    compare = {"op": {"enum": list(COUNT_OPERATORS)}, "value": {
        "type": "integer", "minimum": 0, "maximum": MAX_EVENT_COUNT,
    }}  # fmt: skip
    moment = _object(
        {"op": {"enum": list(EVENT_TIME_OPERATORS)}, "value": {"oneOf": [_TIMESTAMP, _DURATION]}},
        ["op", "value"],
        root=False,
    )
    anchor = {"oneOf": [
        _object({"attr": {"type": "string", "pattern": _PATH}}, ["attr"], root=False),
        {"const": "created_at"},
    ]}  # fmt: skip
    window = {
        "oneOf": [
            _object({"last": _DURATION}, ["last"], root=False),
            _object({"since": _TIMESTAMP}, ["since"], root=False),
            _object(
                {"between": {"type": "array", "prefixItems": [_TIMESTAMP, _TIMESTAMP],
                             "minItems": 2, "maxItems": 2}},
                ["between"],
                root=False,
            ),
            *(
                _object({"within": _DURATION, side: anchor}, ["within", side], root=False)
                for side in ("after", "before")
            ),
        ]
    }  # fmt: skip
    spec = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "pattern": r"^[^*]{1,255}$|^[^*]{1,254}\.\*$"},
            "where": {"$ref": "#/$defs/event_data"},
            "window": window,
            "count": _object(compare, ["op", "value"], root=False),
            "first": moment,
            "last": moment,
        },
        "required": ["type"],
        "additionalProperties": False,
        "oneOf": [{"required": [measure]} for measure in EVENT_MEASURES],
    }
    return _object({"event": spec}, ["event"], root)


def _event_data() -> dict[str, Any]:
    """An event leaf's `where`: attribute leaves over the event's data."""
    node = {"$ref": "#/$defs/event_data"}
    leaf = _attribute_leaf(root=False)
    leaf = {**leaf, "properties": {k: v for k, v in leaf["properties"].items() if k != "src"}}
    variants = {
        "all": _object({"all": {"type": "array", "items": node}}, ["all"], False),
        "any": _object({"any": {"type": "array", "items": node}}, ["any"], False),
        "not": _object({"not": node}, ["not"], False),
        "attr": leaf,
    }
    cases = [({"required": [key]}, variant) for key, variant in variants.items()]
    return {"type": "object", **_chain(cases, {"not": {}})}


def _node(root: bool) -> dict[str, Any]:
    node = {"$ref": "#/$defs/node"}
    stage = {"enum": list(STAGES)}
    variants = {
        "all": _object({"all": {"type": "array", "items": node}}, ["all"], root),
        "any": _object({"any": {"type": "array", "items": node}}, ["any"], root),
        "not": _object({"not": node}, ["not"], root),
        "attr": _attribute_leaf(root),
        "stage": _special(
            "stage",
            STAGE_OPERATORS,
            {"oneOf": [stage, {"type": "array", "items": stage, "minItems": 1}]},
            root,
        ),
        "stage_age": _special("stage_age", STAGE_AGE_OPERATORS, _DURATION, root),
        "created_at": _special(
            "created_at", CREATED_AT_OPERATORS, {"oneOf": [_TIMESTAMP, _DURATION]}, root
        ),
        "event_type": _special(
            "event_type",
            EVENT_TYPE_OPERATORS,
            {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            root,
        ),
        "in_segment": _object(
            {"in_segment": {"type": "string", "format": "uuid"}}, ["in_segment"], root
        ),
        "event": _event_leaf(root),
    }
    cases = [({"required": [key]}, variant) for key, variant in variants.items()]
    return {"type": "object", **_chain(cases, {"not": {}})}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://lifecycle-ops.dev/schemas/condition-v1.json",
    "title": f"lifecycle-ops condition, version {VERSION}",
    "description": "See docs/conditions.md.",
    **_node(root=True),
    "$defs": {"node": _node(root=False), "event_data": _event_data()},
}

if __name__ == "__main__":
    print(json.dumps(SCHEMA, indent=2))
