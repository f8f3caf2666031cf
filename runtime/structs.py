"""Conversions between google.protobuf.Struct and plain JSON values.

Struct numbers are doubles; integral ones become ints so that stored JSON
reads as it was meant (3, not 3.0).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import struct_pb2

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
    return {key: _from_value(value) for key, value in struct.fields.items()}


def dict_to_struct(data: JsonObject | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def json_size(data: JsonObject) -> int:
    """Bytes of the compact JSON form, the unit of the documented size limits."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
