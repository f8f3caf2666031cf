"""CEL expressions and ISO-8601 timer values: compiled once when a workflow is
saved, evaluated at run time. No Python eval anywhere: CEL is side-effect free,
and its parser runs in Rust behind a size limit that keeps its recursion bounded."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

# Well under the nesting at which the CEL library's evaluator exhausts its stack.
MAX_EXPRESSION_CHARS = 4096
# Lists and maps nested in a variable's value, whether a request or an
# expression gives it (an output mapping can wrap a variable in itself on each
# turn of a loop): well inside the 32 levels protobuf decodes in the messages
# that carry variables back out.
MAX_VALUE_DEPTH = 24
# Names an expression sees besides the execution's variables; variables may not use them.
RESERVED_NAMES = frozenset({"vars", "user", "now"})


class ExpressionError(Exception):
    """An expression that does not compile, or fails or has the wrong type when evaluated."""


@dataclass(frozen=True)
class Expression:
    source: str
    program: cel.Program
    uses_user: bool


def strip_marker(text: str) -> str:
    """Zeebe marks expressions with a leading '='; CEL itself does not need it."""
    text = text.strip()
    return text[1:].strip() if text.startswith("=") else text


def compile_expression(text: str) -> Expression:
    source = strip_marker(text)
    if not source:
        raise ExpressionError("is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as error:
        raise ExpressionError(f"is not valid CEL: {_first_line(error)}") from error
    return Expression(source, program, "user" in program.variables())


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:300]


def evaluate(expression: Expression, context: Mapping[str, Any]) -> Any:
    try:
        return expression.program.execute(dict(context))
    except Exception as error:  # the CEL library raises many types for bad data
        raise ExpressionError(f"{expression.source!r} failed: {_first_line(error)}") from error


def evaluate_bool(expression: Expression, context: Mapping[str, Any]) -> bool:
    value = evaluate(expression, context)
    if not isinstance(value, bool):
        raise ExpressionError(f"{expression.source!r} gave {type(value).__name__}, not a bool")
    return value


def evaluate_map(expression: Expression, context: Mapping[str, Any]) -> dict[str, Any]:
    value = evaluate(expression, context)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ExpressionError(f"{expression.source!r} must give a map with string keys")
    return {key: plain(item) for key, item in value.items()}


def plain(value: Any) -> Any:
    """A CEL result as JSON-compatible data, nested at most MAX_VALUE_DEPTH deep."""
    converted = _converted(value)
    if too_deep(converted):
        raise ExpressionError(f"gave a value nested more than {MAX_VALUE_DEPTH} levels deep")
    return converted


def _converted(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _converted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_converted(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"PT{value.total_seconds():g}S"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def too_deep(value: Any) -> bool:
    """Whether lists and maps nest in `value` more than MAX_VALUE_DEPTH levels."""
    level = [value]
    for _ in range(MAX_VALUE_DEPTH):
        level = [
            item
            for container in level
            if isinstance(container, dict | list)
            for item in (container.values() if isinstance(container, dict) else container)
        ]
    return any(isinstance(item, dict | list) for item in level)


# ---------------------------------------------------------------- timers

_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?!$)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_CYCLE = re.compile(r"^R(\d*)/(.+)$")


@dataclass(frozen=True)
class Duration:
    """An ISO-8601 duration; months and years follow the calendar."""

    months: int
    delta: timedelta

    def after(self, moment: datetime) -> datetime:
        return _add_months(moment, self.months) + self.delta

    @property
    def approximate_seconds(self) -> float:
        return self.months * 30 * 86400 + self.delta.total_seconds()


def parse_duration(text: str) -> Duration:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ExpressionError(f"{text!r} is not an ISO-8601 duration such as P3D or PT10M")
    years, months, weeks, days, hours, minutes, seconds = match.groups()
    return Duration(
        months=int(years or 0) * 12 + int(months or 0),
        delta=timedelta(
            weeks=int(weeks or 0),
            days=int(days or 0),
            hours=int(hours or 0),
            minutes=int(minutes or 0),
            seconds=float(seconds or 0),
        ),
    )


def parse_date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise ExpressionError(f"{text!r} is not an ISO-8601 date-time") from error
    if moment.tzinfo is None:
        raise ExpressionError(f"{text!r} needs a time zone (e.g. Z or +02:00)")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Cycle:
    """R[n]/[start/]duration: n repetitions (None: unbounded)."""

    repetitions: int | None
    start: datetime | None
    interval: Duration


def parse_cycle(text: str) -> Cycle:
    match = _CYCLE.match(text.strip())
    if match is None:
        raise ExpressionError(f"{text!r} is not an ISO-8601 cycle such as R3/PT1H")
    count, rest = match.groups()
    parts = rest.split("/")
    if len(parts) > 2:
        raise ExpressionError(f"{text!r} is not an ISO-8601 cycle such as R3/PT1H")
    start = parse_date(parts[0]) if len(parts) == 2 else None
    interval = parse_duration(parts[-1])
    if interval.approximate_seconds <= 0:
        raise ExpressionError(f"{text!r} repeats with an empty interval")
    repetitions = int(count) if count else None
    if repetitions == 0:
        raise ExpressionError(f"{text!r} repeats zero times")
    return Cycle(repetitions, start, interval)


def _add_months(moment: datetime, months: int) -> datetime:
    if not months:
        return moment
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
