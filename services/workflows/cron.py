"""Cron expressions for timer cycles, as Zeebe takes them: Spring's six fields
(second minute hour day-of-month month day-of-week) and the macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight, @hourly, in UTC.

Each field is `*`, `?` (day fields only; the same as `*`), a value, a range
`a-b`, a step `*/n`, `a/n` or `a-b/n`, or a comma-separated list of these;
months and days of the week may be named (JAN, MON; Sunday is 0 or 7). As in
Spring, a day must match both day fields when both are restricted. Spring's
`L`, `W` and `#` are refused with a sentence saying so.

`Cron.after(moment)` is the first firing strictly after a moment. The search
walks the months a day may fall in, then the days of each, so it is bounded by
the 400 years after which the Gregorian calendar repeats: an expression that
can fire fires within them, and one that cannot is refused when parsed."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The Gregorian calendar repeats its days of the week every 400 years.
SEARCH_YEARS = 400
MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
MONTH_NAMES = {name.upper(): n for n, name in enumerate(calendar.month_abbr) if name}
DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
# Spring's special characters this module does not take, and what they mean there.
REFUSED = {"L": "last day", "W": "nearest weekday", "#": "nth day of the week"}


class CronError(ValueError):
    """A cron expression that cannot be read, as a sentence naming the field."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    # Whether '?' is accepted (the day fields).
    question: bool = False


FIELDS = (
    _Field("second", 0, 59, {}),
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}, question=True),
    _Field("month", 1, 12, MONTH_NAMES),
    _Field("day-of-week", 0, 7, DAY_NAMES, question=True),
)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the values each field allows."""

    source: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    # 0 is Monday, as datetime.weekday() counts.
    weekdays: frozenset[int]

    def after(self, moment: datetime) -> datetime:
        """The first firing strictly after `moment` (UTC, whole seconds)."""
        start = moment.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        first_day = True
        year, month = start.year, start.month
        for _ in range(SEARCH_YEARS * 12 + 1):
            if month in self.months:
                found = self._in_month(year, month, start if first_day else None)
                if found is not None:
                    return found
            first_day = False
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            if year > 9999:
                break
        raise CronError(f"{self.source!r} does not fire after {moment.isoformat()}")

    def _in_month(self, year: int, month: int, start: datetime | None) -> datetime | None:
        length = calendar.monthrange(year, month)[1]
        first = start.day if start is not None else 1
        for day in range(first, length + 1):
            if not self._day_matches(year, month, day):
                continue
            since = start if start is not None and day == start.day else None
            found = self._in_day(since)
            if found is not None:
                hour, minute, second = found
                return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        return None

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        weekday = calendar.weekday(year, month, day)
        return day in self.days and weekday in self.weekdays

    def _in_day(self, since: datetime | None) -> tuple[int, int, int] | None:
        """The first (hour, minute, second) allowed at or after `since`'s time (any: None)."""
        floor = (since.hour, since.minute, since.second) if since is not None else (0, 0, 0)
        for hour in self.hours:
            if hour < floor[0]:
                continue
            for minute in self.minutes:
                if (hour, minute) < floor[:2]:
                    continue
                for second in self.seconds:
                    if (hour, minute, second) >= floor:
                        return hour, minute, second
        return None


def looks_like_cron(text: str) -> bool:
    """Whether a timer cycle is meant as cron rather than ISO-8601 (R...)."""
    stripped = text.strip()
    return stripped.startswith("@") or len(stripped.split()) > 1


def parse_cron(text: str) -> Cron:
    """The expression's firing rules; CronError names the field at fault."""
    source = text.strip()
    expanded = MACROS.get(source.lower(), source) if source.startswith("@") else source
    if expanded.startswith("@"):
        raise CronError(f"{source!r}: unknown macro (known: {', '.join(MACROS)})")
    parts = expanded.split()
    if len(parts) != len(FIELDS):
        raise CronError(
            f"{source!r} has {len(parts)} fields; a cron expression has 6"
            " (second minute hour day-of-month month day-of-week)"
        )
    values = [_values(part, spec, source) for part, spec in zip(parts, FIELDS, strict=True)]
    seconds, minutes, hours, days, months, weekdays = values
    cron = Cron(
        source,
        tuple(sorted(seconds)),
        tuple(sorted(minutes)),
        tuple(sorted(hours)),
        frozenset(days),
        frozenset(months),
        frozenset((w - 1) % 7 for w in weekdays),  # cron's Sunday (0 or 7) is weekday 6
    )
    if not any(day <= _longest(month) for month in cron.months for day in cron.days):
        raise CronError(f"{source!r} never fires: no month has those days")
    return cron


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _values(part: str, spec: _Field, source: str) -> set[int]:
    def refuse(problem: str) -> CronError:
        return CronError(f"{source!r}: {spec.name} {problem}")

    if part == "?":
        if not spec.question:
            raise refuse("cannot be '?' (only the day fields can)")
        part = "*"
    found: set[int] = set()
    for item in part.split(","):
        found |= _item(item, spec, refuse)
    return found


def _item(item: str, spec: _Field, refuse: Callable[[str], CronError]) -> set[int]:
    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise refuse(f"has a step {step_text!r} that is not a positive number")
        step = int(step_text)
    if body == "*":
        low, high = spec.low, spec.high
    elif "-" in body:
        first, _, last = body.partition("-")
        low, high = _value(first, spec, refuse), _value(last, spec, refuse)
        if low > high:
            raise refuse(f"has a range {body!r} that ends before it starts")
    else:
        low = _value(body, spec, refuse)
        # Spring reads 'a/n' as from a to the end, every n.
        high = spec.high if slash else low
    return set(range(low, high + 1, step))


def _value(text: str, spec: _Field, refuse: Callable[[str], CronError]) -> int:
    named = spec.names.get(text.upper())
    if named is not None:
        return named
    for char, meaning in REFUSED.items():
        if char in text.upper():
            raise refuse(f"uses {char!r} ({meaning}), which is not supported here")
    if not text.isdigit():
        raise refuse(f"has {text!r}, which is not a number or a name")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise refuse(f"has {value}, out of {spec.low}-{spec.high}")
    return value
