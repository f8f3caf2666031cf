"""JSON values as the condition language sees them, identically in Python and SQL.

- A path reaches a value only through objects: `a.b` of `{"a": [{"b": 1}]}` is
  missing (PostgreSQL's `#>` would index arrays, which is why path keys may not
  start with a digit or a minus sign).
- Numbers compare as the decimals they are written as (PostgreSQL `numeric`):
  floats become `Decimal(repr(x))`, so 0.1 is 0.1 and 2**60 as a float is the
  1152921504606847000 its JSON text says. Booleans are never numbers.
- Timestamps are strings in one strict RFC 3339 form (TIMESTAMP below): a date
  (midnight UTC) or a date and time with seconds, up to 6 fractional digits and
  `Z` or an offset. Anything else is not a timestamp: no coercion.
- Durations are ISO-8601 durations of fixed length (weeks, days, hours,
  minutes, seconds): a month or a year has no fixed length, so `valid_until`
  could not be exact with them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final


class _Missing:
    """The value at a path that leads nowhere (distinct from JSON null, None)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

Number = int | Decimal

# The only timestamp form: both engines test it with this same pattern (PostgreSQL
# in users.condition_timestamp), then reject impossible days (2023-02-29).
TIMESTAMP_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9]))?$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)

_DURATION = re.compile(
    r"P(?:(?P<weeks>[0-9]+)W|(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?"
    r"(?:(?P<seconds>[0-9]+(?:\.[0-9]{1,6})?)S)?)?)"
)
MAX_DURATION = timedelta(days=36500)
MICROSECOND = timedelta(microseconds=1)


def lookup(document: Any, keys: tuple[str, ...]) -> Any:
    """The value at `keys` inside `document`, through objects only; MISSING if none."""
    value = document
    for key in keys:
        if type(value) is not dict:
            return MISSING
        value = value.get(key, MISSING)
        if value is MISSING:
            return MISSING
    return value


def number(value: Any) -> Number | None:
    """A JSON number as an exact int or Decimal; None for anything else (bools too)."""
    kind = type(value)
    if kind is int or kind is Decimal:
        return value  # type: ignore[no-any-return]
    if kind is float:
        return Decimal(repr(value))
    return None


def json_equal(left: Any, right: Any) -> bool:
    """Equality of two JSON values, as jsonb compares them: no coercion between
    types, numbers by value, arrays in order, objects by keys."""
    if left is MISSING or right is MISSING:
        return left is right
    left_number, right_number = number(left), number(right)
    if left_number is not None or right_number is not None:
        return left_number is not None and left_number == right_number
    if type(left) is not type(right):
        return False
    if type(left) is list:
        return len(left) == len(right) and all(map(json_equal, left, right))
    if type(left) is dict:
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return bool(left == right)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware datetime when `value` is a timestamp string of the one accepted form."""
    if type(value) is not str or _TIMESTAMP.fullmatch(value) is None:
        return None
    text = value if len(value) > 10 else value + "T00:00:00Z"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_duration(value: Any) -> timedelta | None:
    """A fixed-length ISO-8601 duration (PnW, PnDTnHnMnS); None if not one."""
    if type(value) is not str:
        return None
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groupdict().values()):
        return None
    fields = {name: int(text or 0) for name, text in match.groupdict().items() if name != "seconds"}
    whole, _, fraction = (match["seconds"] or "0").partition(".")
    try:
        return timedelta(
            seconds=int(whole), microseconds=int(fraction.ljust(6, "0") or 0), **fields
        )
    except OverflowError:
        return None


def later(moment: datetime, duration: timedelta) -> datetime | None:
    """moment + duration, or None past the last representable instant (year 9999)."""
    try:
        return moment + duration
    except OverflowError:
        return None


def utc(moment: datetime) -> datetime | None:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def format_duration(duration: timedelta) -> str:
    """An ISO-8601 duration (PnDTnHnMnS), the form ExplainMembership shows ages in."""
    sign = "-" if duration < timedelta(0) else ""
    duration = abs(duration)
    hours, rest = divmod(duration.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}P{duration.days}DT{hours}H{minutes}M{seconds}"
    if duration.microseconds:
        text += f".{duration.microseconds:06d}".rstrip("0")
    return text + "S"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
