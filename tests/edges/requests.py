"""Hypothesis strategies for any request of any RPC, built from its protobuf
descriptor: random field values with their extremes, long and odd strings
(U+0000, other scripts, 70,000 characters), deep and wide JSON, many repeated
items, out-of-range Timestamps and Durations; and, beside well-formed
messages, raw bytes that may not parse at all.

Strings lean towards what the services read (UUIDs, stage names, emails,
dates, durations), so that requests reach past the first check."""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import (
    duration_pb2,
    field_mask_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests.workflows.bpmn_docs import (
    catch,
    definitions,
    end,
    flow,
    linear,
    service,
    start,
    with_output,
    xor,
)

MAX_DEPTH = 4
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

_WORDS = [
    "",
    " ",
    "x",
    "Acquisition",
    "Activation",
    "Retention",
    "Revenue",
    "Referral",
    "signup",
    "purchase",
    "billing.*",
    "user.stage_changed",
    "tracked.signup",
    "lifecycle.set_stage",
    "ada@example.com",
    "2026-12-07",
    "1900-01-01",
    "9999-12-31",
    "P1D",
    "PT0S",
    "*",
    "attributes",
    "name",
    "=vars.x > 1",
    "size([1,2].map(a, [a, a])) == 4",
    "\x00",
    "a\x00b",
    "\u202e\ufeff\U0001f600",
    "'; DROP TABLE users; --",
    "%s%n{0}",
]
_STRINGS = st.one_of(
    st.sampled_from(_WORDS),
    st.uuids().map(str),
    st.text(max_size=40),
    st.integers(200, 70_000).map(lambda n: "é" * n),
    st.builds(lambda a, b, c: f"{a}{b}{c}", st.text(max_size=3), st.uuids(), st.text(max_size=3)),
)
# Documents that deploy, with an expression reading variables the request may set.
BPMN_DOCUMENTS = [
    linear(start(), end()),
    linear(
        start(),
        catch("wait", message="go"),
        service("move", "lifecycle.set_stage", stage="Revenue"),
        end(),
    ),
    linear(start(), with_output(service("job", "edge.job"), "n", "=size(vars)"), end()),
    definitions(
        start(),
        xor("split", default="f_no"),
        end("yes"),
        end("no"),
        flow("f_in", "start", "split"),
        flow("f_yes", "split", "yes", "=vars.n > 3"),
        flow("f_no", "split", "no"),
    ),
]
_DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2.0**53, 2.0**63]),
)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [low, high, 0, 1, -1, low + 1, high - 1]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]),
        st.integers(max(low, -1000), min(high, 1000)),
        st.integers(low, high),
    )


def _json(depth: int) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), _DOUBLES, _STRINGS)
    wide = st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(_STRINGS, inner, max_size=5)
        ),
        max_leaves=12,
    )
    deep = st.integers(1, depth).map(_nested)
    many = st.integers(100, 3000).map(lambda n: {f"k{i}": i for i in range(n)})
    return st.one_of(wide, deep, many)


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for level in range(levels):
        value = [value] if level % 2 else {"deeper": value}
    return value


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _STRINGS
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _DOUBLES if kind == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _integers(*INT32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _integers(*UINT32)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _integers(*UINT64)
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return _integers(*INT64)
    return _integers(*INT32)


def _well_known(name: str, depth: int) -> st.SearchStrategy[Message] | None:
    """Timestamps and Durations at and past their ranges; Structs of any shape."""
    seconds = st.one_of(
        _integers(*INT64),
        st.sampled_from([253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801]),
        st.integers(0, 2_000_000_000),
    )
    nanos = _integers(*INT32)
    if name == "google.protobuf.Timestamp":
        return st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), seconds, nanos)
    if name == "google.protobuf.Duration":
        return st.builds(lambda s, n: duration_pb2.Duration(seconds=s, nanos=n), seconds, nanos)
    if name == "google.protobuf.Struct":
        return st.dictionaries(_STRINGS, _json(depth * 20), max_size=6).map(_struct)
    if name == "google.protobuf.FieldMask":
        return st.lists(_STRINGS, max_size=4).map(lambda p: field_mask_pb2.FieldMask(paths=p))
    if name in ("google.protobuf.Value", "google.protobuf.ListValue"):
        return st.just(struct_pb2.Value() if name.endswith("Value") else struct_pb2.ListValue())
    return None


def _struct(data: dict[str, Any]) -> Message:
    struct = struct_pb2.Struct()
    try:
        struct.update(data)
    except ValueError:
        struct.update({"fallback": str(data)[:100]})
    return struct


# Ids of things that exist (a user, a workflow, a segment, a trigger), filled
# by the test before it draws, so that requests naming them get past "not found".
KNOWN_IDS: list[str] = []
_IDS = st.one_of(
    st.deferred(lambda: st.sampled_from(KNOWN_IDS) if KNOWN_IDS else st.uuids().map(str)),
    st.uuids().map(str),
    _STRINGS,
)
_CONDITIONS = st.sampled_from(
    [
        {"v": 1, "attr": "plan", "op": "eq", "value": "pro"},
        {"v": 1, "all": [{"stage": {"op": "eq", "value": "Activation"}}]},
        {"v": 1, "any": [{"attr": "n", "op": "gt", "value": 3}, {"attr": "n", "op": "exists"}]},
        {"v": 1, "attr": "signup_at", "op": "within_last", "value": "P7D"},
    ]
).map(_struct)


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is None:
        if field.type == FieldDescriptor.TYPE_STRING and _names_an_id(field.name):
            return _IDS
        if field.name == "bpmn_xml":
            return st.one_of(st.sampled_from(BPMN_DOCUMENTS), _STRINGS)
        return _scalar(field)
    if field.name in ("condition", "conditions"):
        return st.one_of(_CONDITIONS, messages(field.message_type, depth + 1))
    return messages(field.message_type, depth + 1)


def _names_an_id(name: str) -> bool:
    return name == "id" or name.endswith("_id") or name == "correlation_key"


def _repeated(field: FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
    item = _single(field, depth)
    few = st.lists(item, max_size=4)
    many = st.builds(lambda one, n: [one] * n, item, st.integers(500, 6000))
    return st.one_of(few, many) if depth == 0 else few


def _map_entries(field: FieldDescriptor, depth: int) -> st.SearchStrategy[dict[Any, Any]]:
    entry = field.message_type
    assert entry is not None
    key = _scalar(entry.fields_by_name["key"])
    value = _single(entry.fields_by_name["value"], depth)
    return st.dictionaries(key, value, max_size=4)


@cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with a random subset of fields set."""
    known = _well_known(descriptor.full_name, depth)
    if known is not None:
        return known
    cls = message_factory.GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            optional[field.name] = _map_entries(field, depth)
        elif field.is_repeated:
            optional[field.name] = _repeated(field, depth)
        else:
            optional[field.name] = _single(field, depth)
    return st.fixed_dictionaries({}, optional=optional).map(
        lambda values: _build(cls, descriptor, values)
    )


def _build(cls: type[Message], descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        _set(message, descriptor.fields_by_name[name], value)
    return message


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def requests(descriptor: Descriptor) -> st.SearchStrategy[Message | bytes]:
    """What a hostile client sends: a message of the request type, or raw bytes."""
    return st.one_of(messages(descriptor), st.binary(max_size=256))
