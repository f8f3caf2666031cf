"""Parsing of request fields shared by every servicer; problems are added to a
Violations under the field's name so that one error reports them all."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from google.protobuf import timestamp_pb2

from runtime.errors import Violations
from runtime.stages import stage_name

# Names are VARCHAR(255) in the schema.
MAX_NAME_LENGTH = 255


def parse_uuid(
    value: str, field: str, violations: Violations, *, required: bool = True
) -> uuid.UUID | None:
    if not value:
        if required:
            violations.add(field, "is required")
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        violations.add(field, "must be a UUID")
        return None


def required_id(value: str, field: str) -> uuid.UUID:
    """A request's one required UUID field: INVALID_ARGUMENT naming it when it is
    missing or not a UUID."""
    violations = Violations()
    parsed = parse_uuid(value, field, violations)
    violations.check()
    assert parsed is not None
    return parsed


def parse_stage(
    value: int, field: str, violations: Violations, *, default: str | None = None
) -> str | None:
    """The stored name of a stage enum; `default` (or a violation) for UNSPECIFIED."""
    if value == 0:
        if default is None:
            violations.add(field, "is required")
        return default
    name = stage_name(value)
    if name is None:
        violations.add(field, f"{value} is not a lifecycle stage")
    return name


def parse_stages(values: list[int], field: str, violations: Violations) -> list[str]:
    names = []
    for position, value in enumerate(values):
        name = parse_stage(value, f"{field}[{position}]", violations)
        if name is not None:
            names.append(name)
    return names


def optional_time(message: object, name: str) -> datetime | None:
    """A Timestamp field as an aware datetime, or None when unset."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def check_name(value: str, field: str, violations: Violations, *, required: bool = True) -> str:
    """A name (of a workflow, a segment, a trigger, a message, a job type):
    trimmed, at most MAX_NAME_LENGTH characters, and given unless optional."""
    name = value.strip()
    if required and not name:
        violations.add(field, "is required")
    elif len(name) > MAX_NAME_LENGTH:
        violations.add(field, f"must be at most {MAX_NAME_LENGTH} characters")
    return name


def parse_date(value: str, field: str, violations: Violations) -> date | None:
    """A required ISO-8601 date (YYYY-MM-DD)."""
    if not value:
        violations.add(field, "is required (YYYY-MM-DD)")
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        violations.add(field, "must be a date as YYYY-MM-DD")
        return None


def parse_date_range(
    start: str, end: str, violations: Violations, *, max_days: int, prefix: str = ""
) -> tuple[date, date] | None:
    """An inclusive range of `<prefix>start_date` to `<prefix>end_date`, at most
    `max_days` days long."""
    first = parse_date(start, f"{prefix}start_date", violations)
    last = parse_date(end, f"{prefix}end_date", violations)
    if first is None or last is None:
        return None
    if last < first:
        violations.add(f"{prefix}end_date", "must not be before start_date")
        return None
    if (last - first).days >= max_days:
        violations.add(f"{prefix}end_date", f"the range must span at most {max_days} days")
        return None
    return first, last
