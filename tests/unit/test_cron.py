"""Cron expressions of timer cycles (services/workflows/cron.py): Spring's six
fields and the macros, the next firing after a moment, and the refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.workflows.cron import CronError, looks_like_cron, parse_cron
from services.workflows.expressions import Cycle, ExpressionError, parse_cycle


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *rest: int) -> datetime:
    second, micro = (*rest, 0, 0)[:2]
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def firings(expression: str, after: datetime, count: int) -> list[datetime]:
    cron, found = parse_cron(expression), []
    for _ in range(count):
        after = cron.after(after)
        found.append(after)
    return found


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # Every 15 minutes in office hours on weekdays: Saturday noon goes to Monday 9:00.
        ("0 */15 9-17 * * MON-FRI", at(2026, 12, 5, 12, 0), at(2026, 12, 7, 9, 0)),
        ("0 */15 9-17 * * MON-FRI", at(2026, 12, 7, 9, 0), at(2026, 12, 7, 9, 15)),
        ("0 */15 9-17 * * MON-FRI", at(2026, 12, 7, 17, 45), at(2026, 12, 8, 9, 0)),
        # Strictly after: a moment that fires gives the next one.
        ("0 0 12 * * *", at(2026, 3, 1, 12, 0), at(2026, 3, 2, 12, 0)),
        ("0 0 12 * * *", at(2026, 3, 1, 11, 59, 59, 999999), at(2026, 3, 1, 12, 0)),
        # Month ends: the 31st skips the months without one.
        ("0 0 0 31 * ?", at(2026, 1, 31, 0, 0), at(2026, 3, 31)),
        ("0 0 0 31 * ?", at(2026, 4, 1), at(2026, 5, 31)),
        # Leap days: Feb 29 waits for a leap year, and 2100 is none.
        ("0 0 0 29 2 *", at(2026, 3, 1), at(2028, 2, 29)),
        ("0 0 0 29 2 *", at(2096, 3, 1), at(2104, 2, 29)),
        # Both day fields restricted: both must match (Spring), Friday the 13th.
        ("0 0 0 13 * FRI", at(2026, 1, 1), at(2026, 2, 13)),
        # Sunday is 0 and 7 and SUN.
        ("0 0 6 * * 0", at(2026, 12, 7), at(2026, 12, 13, 6)),
        ("0 0 6 * * 7", at(2026, 12, 7), at(2026, 12, 13, 6)),
        ("0 0 6 * * sun", at(2026, 12, 7), at(2026, 12, 13, 6)),
        # Month names, lists and 'a/n' steps (from a to the end).
        ("0 0 0 1 JAN,jul *", at(2026, 2, 1), at(2026, 7, 1)),
        ("10/20 * * * * *", at(2026, 1, 1, 0, 0, 51), at(2026, 1, 1, 0, 1, 10)),
        ("0 0 1-5/2 * * *", at(2026, 1, 1, 1, 0), at(2026, 1, 1, 3, 0)),
        # Year end.
        ("0 30 23 31 12 *", at(2026, 12, 31, 23, 30), at(2027, 12, 31, 23, 30)),
        # Macros.
        ("@yearly", at(2026, 6, 1), at(2027, 1, 1)),
        ("@annually", at(2026, 6, 1), at(2027, 1, 1)),
        ("@monthly", at(2026, 1, 31, 8), at(2026, 2, 1)),
        ("@weekly", at(2026, 12, 7), at(2026, 12, 13)),
        ("@daily", at(2026, 12, 7, 0, 0, 1), at(2026, 12, 8)),
        ("@midnight", at(2026, 12, 7, 23, 59, 59), at(2026, 12, 8)),
        ("@HOURLY", at(2026, 12, 7, 10, 0), at(2026, 12, 7, 11, 0)),
    ],
)
def test_the_next_firing_after_a_moment(
    expression: str, after: datetime, expected: datetime
) -> None:
    assert parse_cron(expression).after(after) == expected


def test_firings_follow_each_other() -> None:
    assert firings("0 0 9 1 * *", at(2026, 1, 1), 3) == [
        at(2026, 1, 1, 9),
        at(2026, 2, 1, 9),
        at(2026, 3, 1, 9),
    ]
    assert firings("*/20 * * * * *", at(2026, 1, 1), 4) == [
        at(2026, 1, 1, 0, 0, 20),
        at(2026, 1, 1, 0, 0, 40),
        at(2026, 1, 1, 0, 1, 0),
        at(2026, 1, 1, 0, 1, 20),
    ]


def test_fields_are_read_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    noon = parse_cron("0 0 12 * * *")
    assert noon.after(datetime(2026, 7, 1, 13, 30, tzinfo=paris)) == at(2026, 7, 1, 12)
    assert noon.after(datetime(2026, 7, 1, 14, 30, tzinfo=paris)) == at(2026, 7, 2, 12)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 0 L * *", "day-of-month uses 'L' (last day), which is not supported here"),
        ("0 0 0 15W * *", "day-of-month uses 'W' (nearest weekday), which is not supported"),
        ("0 0 0 ? * MON#2", "day-of-week uses '#' (nth day of the week), which is not supported"),
        ("0 0 0 ? * 5L", "day-of-week uses 'L' (last day)"),
        ("* * * * *", "has 5 fields; a cron expression has 6 (second minute hour"),
        ("0 0 0 1 1 * 2030", "has 7 fields"),
        ("@often", "unknown macro (known: @yearly"),
        ("0 0 24 * * *", "hour has 24, out of 0-23"),
        ("60 * * * * *", "second has 60, out of 0-59"),
        ("0 0 0 0 * *", "day-of-month has 0, out of 1-31"),
        ("0 0 0 1 13 *", "month has 13, out of 1-12"),
        ("0 0 0 * * 8", "day-of-week has 8, out of 0-7"),
        ("0 0 0 * FOO *", "month has 'FOO', which is not a number or a name"),
        ("0 ? * * * *", "minute cannot be '?' (only the day fields can)"),
        ("0 0 0 10-2 * *", "day-of-month has a range '10-2' that ends before it starts"),
        ("*/0 * * * * *", "second has a step '0' that is not a positive number"),
        ("0 0 0 30 2 *", "never fires: no month has those days"),
        ("0 0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_refusals_name_the_field(expression: str, message: str) -> None:
    with pytest.raises(CronError) as refused:
        parse_cron(expression)
    assert message in str(refused.value)


def test_a_cycle_is_iso_or_cron() -> None:
    assert looks_like_cron("0 0 9 * * MON") and looks_like_cron("@daily")
    assert not looks_like_cron("R3/PT1H")
    cron = parse_cycle("0 0 9 * * MON")
    assert (cron.repetitions, cron.start) == (None, None)
    assert cron.interval.after(at(2026, 12, 7, 9)) == at(2026, 12, 14, 9)
    iso = parse_cycle("R3/2030-01-01T10:00:00Z/PT1H")
    assert isinstance(iso, Cycle) and iso.repetitions == 3
    assert iso.start == at(2030, 1, 1, 10)
    assert iso.interval.after(at(2030, 1, 1, 10)) == at(2030, 1, 1, 11)
    with pytest.raises(ExpressionError, match="day-of-month uses 'L'"):
        parse_cycle("0 0 0 L * *")
    with pytest.raises(ExpressionError, match="nor a cron expression"):
        parse_cycle("PT1H")
