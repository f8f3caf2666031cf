"""The protobuf wire format, as far as the outbox needs it.

A message's serialization is its fields' encodings one after another. So a
request whose fields are all repeated (a mergeable outbox payload) is the
concatenation of one-item requests, and splits back into its items, one
encoded field each.
"""

from __future__ import annotations

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def message_field(number: int, message: bytes) -> bytes:
    """A serialized message as one value of field `number` of another: with the
    other's items so encoded, joined, a repeated field of it is made."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(message)) + message


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def fields(payload: bytes) -> list[bytes]:
    """The encoded fields of a serialized message, in order: the items of a
    request whose fields are all repeated."""
    items, position = [], 0
    while position < len(payload):
        start = position
        tag, position = _read_varint(payload, position)
        kind = tag & 7
        if kind == _VARINT:
            _, position = _read_varint(payload, position)
        elif kind == _LENGTH_DELIMITED:
            size, position = _read_varint(payload, position)
            position += size
        elif kind in (_FIXED64, _FIXED32):
            position += 8 if kind == _FIXED64 else 4
        else:
            raise ValueError(f"unsupported wire type {kind}")
        items.append(payload[start:position])
    return items
