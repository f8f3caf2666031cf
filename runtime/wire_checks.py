"""What every request must hold before a service reads it, checked in one place.

Protobuf accepts values that no service can use and that would otherwise fail
deep inside one (as INTERNAL): Timestamps and Durations outside the ranges
their own definitions give (a year past 9999, nanos out of range), and
strings holding U+0000 (PostgreSQL stores no NUL in text). The server
interceptor checks every request with `violations`. A batch RPC whose items
fail alone declares its item field (`ServiceDefinition.batch_items`); the
interceptor leaves those items out, and the servicer checks each item with
`violations` too and answers for it alone.

Struct fields (JSON) are checked where they are decoded, by the decoder every
servicer uses (`runtime.structs.json_object`): decoding reads each value
anyway, so the check costs nothing more there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from runtime.errors import FieldViolation, Violations
from runtime.structs import NUL_DESCRIPTION

# google/protobuf/timestamp.proto and duration.proto.
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_DURATION_SECONDS = 315_576_000_000  # about 10,000 years
MAX_NANOS = 999_999_999

_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_NUL = "\x00"

# A value's check: whether it is clean. The paths are found only for a request
# that is not, so that the clean ones, nearly all, cost one pass and no strings.
Clean = Callable[[Any], bool]
Locate = Callable[[Any, str], Iterator[FieldViolation]]


def violations(message: Message, skip: Collection[str] = ()) -> list[FieldViolation]:
    """Every value of `message` no service can use, by field path; top-level
    fields named in `skip` (a batch's items) are left to their servicer."""
    if _clean(message.DESCRIPTOR, frozenset(skip))(message):
        return []
    return list(_locate_message(message, "", frozenset(skip)))


def item_clean(item: Message, violations_of_item: Violations) -> bool:
    """Checks one item of a batch; its problems go to `violations_of_item`."""
    found = violations(item)
    for violation in found:
        violations_of_item.add(violation.field, violation.description)
    return not found


# ------------------------------------------------------------ the one pass


@cache
def _clean(descriptor: Descriptor, skip: frozenset[str] = frozenset()) -> Clean:
    checks = [
        check
        for field in descriptor.fields
        if field.name not in skip and (check := _clean_field(field)) is not None
    ]
    return lambda message: all(check(message) for check in checks)


def _clean_field(field: FieldDescriptor) -> Clean | None:
    """The check of a field, given its message. Reading each checked field is
    several times faster than listing the fields that are set; a singular
    message is read only when set (a type may contain itself)."""
    name = field.name
    if _is_map(field):
        value_check = _clean_single(_map_value(field))
        return lambda message: all(
            (not isinstance(key, str) or _NUL not in key)
            and (value_check is None or value_check(value))
            for key, value in getattr(message, name).items()
        )
    check = _clean_single(field)
    if check is None:
        return None
    if field.is_repeated:
        return lambda message: all(check(value) for value in getattr(message, name))
    if field.message_type is not None:
        return lambda message: not message.HasField(name) or check(getattr(message, name))
    return lambda message: check(getattr(message, name))


def _clean_single(field: FieldDescriptor) -> Clean | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _clean_string
    message = field.message_type
    if message is None or message.full_name in _JSON_TYPES:
        return None
    if message.full_name == "google.protobuf.Timestamp":
        return lambda value: _timestamp_problem(value) is None
    if message.full_name == "google.protobuf.Duration":
        return lambda value: _duration_problem(value) is None
    return _nested(message)


def _nested(message: Descriptor) -> Clean:
    """The check of a message field, planned on first use (a type may contain itself)."""
    planned: list[Clean] = []

    def clean(value: Message) -> bool:
        if not planned:
            planned.append(_clean(message))
        return planned[0](value)

    return clean


def _clean_string(value: str) -> bool:
    return _NUL not in value


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return field.is_repeated and message is not None and message.GetOptions().map_entry


def _map_value(field: FieldDescriptor) -> FieldDescriptor:
    entry = field.message_type
    assert entry is not None
    return entry.fields_by_name["value"]


def _timestamp_problem(value: Any) -> str | None:
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        return "must be between years 1 and 9999"
    if not 0 <= value.nanos <= MAX_NANOS:
        return f"nanos must be from 0 to {MAX_NANOS:,}"
    return None


def _duration_problem(value: Any) -> str | None:
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > MAX_DURATION_SECONDS:
        return f"must be within ±{MAX_DURATION_SECONDS:,} seconds"
    if abs(nanos) > MAX_NANOS or (seconds and nanos and (seconds < 0) != (nanos < 0)):
        return f"nanos must be within ±{MAX_NANOS:,} and of the sign of seconds"
    return None


# ------------------------------------------------------------ where it is not


def _locate_message(message: Message, path: str, skip: frozenset[str]) -> Iterator[FieldViolation]:
    for field, value in message.ListFields():
        if field.name not in skip:
            yield from _locate_field(field, value, f"{path}{field.name}")


def _locate_field(field: FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    if _is_map(field):
        value_field = _map_value(field)
        for key, item in value.items():
            if isinstance(key, str) and _NUL in key:
                yield FieldViolation(path, f"a key {NUL_DESCRIPTION}")
            else:
                yield from _locate_single(value_field, item, f"{path}[{key!r}]")
    elif field.is_repeated:
        for position, item in enumerate(value):
            yield from _locate_single(field, item, f"{path}[{position}]")
    else:
        yield from _locate_single(field, value, path)


def _locate_single(field: FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    message = field.message_type
    if field.type == FieldDescriptor.TYPE_STRING:
        if _NUL in value:
            yield FieldViolation(path, NUL_DESCRIPTION)
    elif message is None or message.full_name in _JSON_TYPES:
        return
    elif message.full_name == "google.protobuf.Timestamp":
        if (problem := _timestamp_problem(value)) is not None:
            yield FieldViolation(path, problem)
    elif message.full_name == "google.protobuf.Duration":
        if (problem := _duration_problem(value)) is not None:
            yield FieldViolation(path, problem)
    else:
        yield from _locate_message(value, f"{path}.", frozenset())
