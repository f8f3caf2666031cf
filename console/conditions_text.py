"""A condition of the condition language (docs/conditions.md) written as
nested sentences: "all of: plan is one of pro, team; sessions ≥ 8", "at
least 3 purchase events in the last 30 days". Plain text only: the templates
escape it like everything else."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Node = Mapping[str, Any]
# Segment names by id, for in_segment leaves.
Names = Mapping[str, str]
_NO_NAMES: Names = {}


@dataclass(frozen=True)
class Link:
    href: str
    label: str


@dataclass(frozen=True)
class Phrase:
    """One sentence of a condition (its text, then a link when it names a
    segment), and the sentences it introduces."""

    text: str
    children: list[Phrase] = field(default_factory=list)
    link: Link | None = None


_ATTR_OPS = {
    "eq": "is",
    "neq": "is not",
    "in": "is one of",
    "not_in": "is not one of",
    "exists": "is set",
    "not_exists": "is not set",
    "gt": ">",
    "gte": "≥",
    "lt": "<",
    "lte": "≤",
    "between": "is between",
    "not_between": "is not between",
    "contains": "contains",
    "not_contains": "does not contain",
    "starts_with": "starts with",
    "ends_with": "ends with",
    "regex": "matches the pattern",
    "not_regex": "does not match the pattern",
    "has": "has",
    "has_any": "has any of",
    "has_all": "has all of",
    "has_none": "has none of",
    "before": "is before",
    "after": "is after",
    "within_last": "is within the last",
    "not_within_last": "is not within the last",
    "changed": "changed",
    "changed_to": "changed to",
    "changed_from": "changed from",
}
# When the first or last event happened: in the past tense.
_EVENT_TIME_OPS = {
    "before": "was before",
    "after": "was after",
    "within_last": "was within the last",
    "not_within_last": "was not within the last",
}
_COUNT_OPS = {
    "eq": "exactly",
    "neq": "not exactly",
    "gt": "more than",
    "gte": "at least",
    "lt": "fewer than",
    "lte": "at most",
}
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_UNITS = ("weeks", "days", "hours", "minutes", "seconds")


def duration(value: Any) -> str:
    """P1DT2H -> "1 day 2 hours"; anything else as it is written."""
    found = _DURATION.fullmatch(str(value))
    if found is None or not any(found.groupdict().values()):
        return scalar(value)
    parts = [(found[unit], unit) for unit in _UNITS if found[unit]]
    return " ".join(f"{n} {unit[:-1] if n == '1' else unit}" for n, unit in parts)


def scalar(value: Any) -> str:
    """A string as it is (quoted when empty); numbers and booleans as JSON,
    whole numbers without a decimal point (a Struct holds them as doubles)."""
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, ensure_ascii=False)


def _values(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(scalar(v) for v in value)
    return scalar(value)


def _operand(op: str, value: Any) -> str:
    """What follows an operator: nothing, a range, a duration or the values."""
    if op in ("exists", "not_exists", "changed"):
        return ""
    if op in ("between", "not_between") and isinstance(value, list) and len(value) == 2:
        return f" {scalar(value[0])} and {scalar(value[1])}"
    if op in ("within_last", "not_within_last"):
        return f" {duration(value)}"
    return f" {_values(value)}"


def _comparison(subject: str, spec: Node, words: Mapping[str, str] = _ATTR_OPS) -> str:
    op = str(spec.get("op", ""))
    return f"{subject} {words.get(op, op)}{_operand(op, spec.get('value'))}"


def _attr(node: Node) -> Phrase:
    subject = str(node["attr"])
    if node.get("src") == "event":
        subject = f"the event's {subject}"
    text = _comparison(subject, node)
    return Phrase(f"{text} (ignoring case)" if node.get("ci") else text)


def _stage_age(node: Node) -> Phrase:
    spec = node["stage_age"]
    op = str(spec.get("op", ""))
    return Phrase(f"time in stage {_ATTR_OPS.get(op, op)} {duration(spec.get('value'))}")


def _window(window: Mapping[str, Any] | None) -> str:
    """A count's window: every event kept when it has none."""
    if not window:
        return ""
    if "last" in window:
        return f" in the last {duration(window['last'])}"
    if "since" in window:
        return f" since {scalar(window['since'])}"
    if "within" in window:
        return _anchored(window)
    return f" between {_operand('between', window['between']).strip()}"


def _anchored(window: Mapping[str, Any]) -> str:
    """A window of a duration after (or before) a moment of the person's own."""
    side = "after" if "after" in window else "before"
    anchor = window.get(side)
    moment = (
        f"their {scalar(anchor['attr'])}"
        if isinstance(anchor, Mapping) and "attr" in anchor
        else "they were created"
        if anchor == "created_at"
        else scalar(anchor)
    )
    return f" within {duration(window['within'])} {side} {moment}"


def _count(spec: Node, kind: str, where: str, window: Mapping[str, Any] | None) -> str:
    op, n = str(spec.get("op", "")), spec.get("value")
    if op == "eq" and n == 0:
        return f"no {kind} events{where}{_window(window)}"
    noun = "event" if n == 1 else "events"
    return f"{_COUNT_OPS.get(op, op)} {scalar(n)} {kind} {noun}{where}{_window(window)}"


def _event(node: Node, names: Names) -> Phrase:
    spec = node["event"]
    kind = scalar(spec.get("type"))
    where = describe(spec["where"], names) if "where" in spec else None
    inline = f" where {where.text}" if where is not None and not where.children else ""
    if "count" in spec:
        text = _count(spec["count"], kind, inline, spec.get("window"))
    else:
        measure = "first" if "first" in spec else "last"
        text = _comparison(f"the {measure} {kind} event{inline}", spec[measure], _EVENT_TIME_OPS)
    if where is None or inline:
        return Phrase(text)
    return Phrase(f"{text}, considering only events where:", [where])


def _group(word: str, empty: str) -> Callable[[Node, Names], Phrase]:
    def group(node: Node, names: Names) -> Phrase:
        children: Sequence[Node] = node[word]
        if not children:
            return Phrase(empty)
        return Phrase(f"{word} of:", [describe(child, names) for child in children])

    return group


def _in_segment(node: Node, names: Names) -> Phrase:
    """The segment by its name when known (else its id), linking its page."""
    segment_id = scalar(node["in_segment"])
    return Phrase(
        "is in segment ", link=Link(f"/segments/{segment_id}", names.get(segment_id, segment_id))
    )


_NODES: dict[str, Callable[[Node, Names], Phrase]] = {
    "all": _group("all", "always holds"),
    "any": _group("any", "never holds"),
    "not": lambda node, names: Phrase("not:", [describe(node["not"], names)]),
    "attr": lambda node, _: _attr(node),
    "stage": lambda node, _: Phrase(_comparison("stage", node["stage"])),
    "stage_age": lambda node, _: _stage_age(node),
    "created_at": lambda node, _: Phrase(_comparison("creation time", node["created_at"])),
    "in_segment": _in_segment,
    "event": _event,
    "event_type": lambda node, _: Phrase(_comparison("the event's type", node["event_type"])),
}


def describe(node: Node, names: Names = _NO_NAMES) -> Phrase:
    """The sentence of a node (the language version `v` aside); a node this
    console does not know is shown as its JSON. `names`: the segments'
    names by id, which in_segment leaves show (their ids otherwise)."""
    for key, write in _NODES.items():
        if key in node:
            return write(node, names)
    shown = {k: v for k, v in node.items() if k != "v"}
    return Phrase(json.dumps(shown, ensure_ascii=False, sort_keys=True))


def segment_ids(node: Any) -> set[str]:
    """The segments a condition's in_segment leaves name, wherever they sit."""
    return set(_segment_ids(node))


def _segment_ids(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if isinstance(node.get("in_segment"), str):
            yield node["in_segment"]
        for value in node.values():
            yield from _segment_ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _segment_ids(value)
