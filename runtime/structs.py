"""Conversions between protobuf well-known types and plain Python values.

Struct numbers are doubles; integral ones become ints so that stored JSON
reads as it was meant (3, not 3.0).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

JsonObject = dict[str, Any]

_MAX_SAFE_INTEGER = 2**53


def _from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < _MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> JsonObject:
    fields = struct.fields
    return {key: _from_value(fields[key]) for key in fields}


def dict_to_struct(data: JsonObject | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(data: JsonObject) -> str:
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
