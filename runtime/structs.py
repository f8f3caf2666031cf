"""Conversions between protobuf well-known types and plain Python values.

Struct numbers are doubles; integral ones become ints so that stored JSON
reads as it was meant (3, not 3.0).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from runtime.errors import Violations

JsonObject = dict[str, Any]

_MAX_SAFE_INTEGER = 2**53
_NUL = "\x00"
NUL_DESCRIPTION = "must not contain the character U+0000"


class JsonValueError(ValueError):
    """A Struct holds what JSON in PostgreSQL cannot: U+0000 (text and jsonb store
    no NUL) or a number that is not finite (JSON has none). `path` locates it
    inside the Struct (`items[2].name`)."""

    def __init__(self, description: str, path: str = "") -> None:
        super().__init__(f"{path}: {description}" if path else description)
        self.description = description
        self.path = path


def _from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < _MAX_SAFE_INTEGER:
            return int(number)
        if not math.isfinite(number):
            raise JsonValueError("must be a finite number")
        return number
    if kind == "string_value":
        text = value.string_value
        if _NUL in text:
            raise JsonValueError(NUL_DESCRIPTION)
        return text
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _object(value.struct_value)
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    return None


def _key(key: str) -> str:
    if _NUL in key:
        raise JsonValueError(f"a key {NUL_DESCRIPTION}")
    return key


def _object(struct: struct_pb2.Struct) -> JsonObject:
    fields = struct.fields
    return {_key(key): _from_value(fields[key]) for key in fields}


def struct_to_dict(struct: struct_pb2.Struct) -> JsonObject:
    """The Struct as plain values; JsonValueError, located, for what JSON cannot hold."""
    try:
        return _object(struct)
    except JsonValueError as error:
        # Located only now: tracking paths while converting would cost every call.
        raise JsonValueError(error.description, (_locate(struct) or ".")[1:]) from None


def json_object(struct: struct_pb2.Struct, field: str, violations: Violations) -> JsonObject | None:
    """A request's Struct field as plain values; None, with the problem added to
    `violations` under the field's path (`data.items[2]`), when JSON cannot hold it."""
    try:
        return struct_to_dict(struct)
    except JsonValueError as error:
        violations.add(f"{field}.{error.path}" if error.path else field, error.description)
        return None


def _locate(struct: struct_pb2.Struct) -> str | None:
    """The path (`.items[2].name`) of the first value `_object` refuses in `struct`."""
    for key, value in struct.fields.items():
        if _NUL in key:
            return "." + key.replace(_NUL, "\\u0000")
        inner = _locate_value(value)
        if inner is not None:
            return f".{key}{inner}"
    return None


def _locate_value(value: struct_pb2.Value) -> str | None:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _locate(value.struct_value)
    if kind == "list_value":
        for position, item in enumerate(value.list_value.values):
            inner = _locate_value(item)
            if inner is not None:
                return f"[{position}]{inner}"
        return None
    try:
        _from_value(value)
    except JsonValueError:
        return ""
    return None


def dict_to_struct(data: JsonObject | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Numbers as the decimals they are written as, as conditions read them
# (docs/conditions.md); one decoder for all, as building one per document
# costs as much as decoding it.
DECIMAL_JSON = json.JSONDecoder(parse_float=Decimal)


def compact_json(data: JsonObject | list[Any]) -> str:
    """The compact JSON form; its UTF-8 length is the unit of the documented size limits."""
    return _COMPACT.encode(data)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(stamp: timestamp_pb2.Timestamp, moment: datetime) -> None:
    """Sets a Timestamp to an aware datetime (Timestamp.FromDatetime is several times slower)."""
    delta = moment - _EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def unix_micros(moment: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_unix_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    set_timestamp(stamp, moment)
    return stamp
