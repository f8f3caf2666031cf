"""Moments compared in time, alike for attribute windows, creation times and
the first or last time of an event: the Python side of conditions.sql's
`window` and of its `before` and `after` comparisons."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from conditions.model import Operator
from conditions.values import MICROSECOND, MISSING, format_timestamp, later, parse_timestamp


class Timed(Protocol):
    """What a comparison in time reads of an evaluation: its moment."""

    @property
    def as_of(self) -> datetime: ...


# A moment within the last `duration` is in [as_of - duration, as_of].


def within(duration: timedelta) -> Callable[[Any, Timed], bool]:
    def holds(value: Any, context: Timed) -> bool:
        moment = value if isinstance(value, datetime) else parse_timestamp(value)
        return moment is not None and context.as_of - duration <= moment <= context.as_of

    return holds


def window_flip(duration: timedelta) -> Callable[[Any, Timed], datetime | None]:
    """When a moment enters the window (it is in the future) or leaves it."""
    leaves_after = duration + MICROSECOND

    def flip(value: Any, context: Timed) -> datetime | None:
        moment = value if isinstance(value, datetime) else parse_timestamp(value)
        if moment is None:
            return None
        if moment > context.as_of:
            return moment
        if moment >= context.as_of - duration:
            return later(moment, leaves_after)
        return None

    return flip


def json_moment(value: Any) -> Any:
    return format_timestamp(value) if isinstance(value, datetime) else value


@dataclass(frozen=True)
class MomentTest:
    """A moment (or MISSING) compared as created_at and event times are."""

    holds: Callable[[Any, Timed], bool]
    flip: Callable[[Any, Timed], datetime | None] | None


def moment_test(op: Operator, value: datetime | timedelta) -> MomentTest:
    if isinstance(value, timedelta):
        return MomentTest(within(value), window_flip(value))
    if op.name == "before":
        return MomentTest(lambda moment, _: moment is not MISSING and moment < value, None)
    return MomentTest(lambda moment, _: moment is not MISSING and moment > value, None)
