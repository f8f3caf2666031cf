"""users.condition_timestamp, the SQL a condition's timestamps compile to, agrees
with parse_timestamp, the Python evaluator's, on every text: the regex-free path
of users migration 0003 for the two common forms (a UTC time without fraction,
a date alone) as much as 0002's regex for the rest. Each check sends all its
texts in one statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conditions.values import MICROSECOND, parse_timestamp
from tests.support import ScratchDatabase

pytestmark = pytest.mark.users

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

VALID = ["2024-02-29T12:34:56Z", "2023-12-31T23:59:59Z", "2000-02-29", "1999-01-01"]
# What may stand in for a character: digits, letters, separators, a fullwidth
# digit (one character, three bytes) and a newline.
REPLACEMENTS = "0123456789aAtTzZ-:.+ \uff12\n"
TIMES = ["00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "19:59:59", "20:00:00"]
OTHER_TEXTS = [
    "",
    "0999-01-01",
    "0999-01-01T00:00:00Z",
    "1000-01-01",
    "1000-01-01T00:00:00Z",
    "9999-12-31",
    "9999-12-31T23:59:59Z",
    "10000-01-01",
    "0000-01-01",
    "2024-02-29T12:34:56.5Z",
    "2024-02-29T12:34:56.123456Z",
    "2024-02-29T12:34:56.1234567Z",
    "2024-02-29T12:34:56.Z",
    "2023-02-29T12:34:56.5Z",
    "2024-02-29T12:34:56+14:00",
    "2024-02-29T12:34:56-14:59",
    "2024-02-29T12:34:56+15:00",
    "2024-02-29T12:34:56+05:30",
    "2024-02-29T12:34:56-00:00",
    "2023-02-29T00:00:00+01:00",
    "9999-12-31T23:59:59.999999-14:59",
    "2024-02-29t12:34:56Z",
    "2024-02-29T12:34:56z",
    "2024-02-29T12:34:56Z\n",
    "2024-02-29\n",
    " 2024-02-29",
    "2024-02-29T12:34:56",
    "2024-02-29 12:34:56Z",
    "20240229",
    "2024-2-29",
    "\uff12\uff10\uff12\uff14-02-29",
]


@pytest.fixture(scope="module")
async def conn(database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A time zone far from UTC: a date alone must still be midnight UTC."""
    connection = await asyncpg.connect(
        database.admin_url, server_settings={"TimeZone": "America/St_Johns"}
    )
    try:
        yield connection
    finally:
        await connection.close()


def microseconds(moment: datetime | None) -> int | None:
    """Since the epoch: what a timestamptz holds, even past 9999-12-31 UTC, where
    asyncpg's datetimes end."""
    return None if moment is None else (moment - EPOCH) // MICROSECOND


async def disagreements(
    conn: asyncpg.Connection, texts: list[str]
) -> list[tuple[str, int | None, int | None]]:
    """(text, SQL's answer, Python's) for each text the two parse differently."""
    rows = await conn.fetch(
        "SELECT t, (extract(epoch FROM users.condition_timestamp(t)) * 1000000)::bigint AS at"
        " FROM unnest($1::text[]) AS t",
        texts,
    )
    assert len(rows) == len(texts)
    answers = [(r["t"], r["at"], microseconds(parse_timestamp(r["t"]))) for r in rows]
    return [answer for answer in answers if answer[1] != answer[2]]


def every_day(year: int) -> list[str]:
    """Each day of the year, and the days just past each month's end and before its start."""
    return [f"{year:04d}-{month:02d}-{day:02d}" for month in range(0, 14) for day in range(0, 33)]


def mutations(text: str) -> list[str]:
    """Each character replaced by each replacement, removed and doubled."""
    found = []
    for i, character in enumerate(text):
        found += [text[:i] + other + text[i + 1 :] for other in REPLACEMENTS if other != character]
        found += [text[:i] + text[i + 1 :], text[:i] + character + text[i:]]
    return found


def corpus() -> list[str]:
    dates = [d for year in (2023, 2024, 1900, 2000) for d in every_day(year)]
    times = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(26) for m, s in ((0, 0), (59, 59))]
    times += [f"12:{m:02d}:{s:02d}" for m in range(62) for s in (0, 60, 61)] + TIMES
    moments = [f"{d}T{t}Z" for d in dates for t in TIMES]
    moments += [f"2024-02-29T{t}Z" for t in times] + [f"2023-12-31T{t}Z" for t in times]
    return dates + moments + [m for v in VALID for m in mutations(v)] + VALID + OTHER_TEXTS


async def test_sql_and_python_agree_on_every_edge(conn: asyncpg.Connection) -> None:
    assert await disagreements(conn, corpus()) == []


def _padded(low: int, high: int, width: int = 2) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:0{width}d}")


_YEARS = st.one_of(
    _padded(998, 10001, 4), st.sampled_from(["1000", "1900", "2000", "2023", "2024", "9999"])
)
_DAYS = st.one_of(_padded(0, 32), st.sampled_from(["28", "29", "30", "31"]))
_MONTHS = st.one_of(_padded(0, 13), st.just("02"))
# Anything PostgreSQL's text can hold (no NUL, no lone surrogate), mostly what
# the form is made of.
_CHARACTERS = st.sampled_from(REPLACEMENTS) | st.characters(
    exclude_categories=["Cs"], exclude_characters="\x00"
)
_SUFFIXES = st.sampled_from(["Z", "Z", "Z", "", "z", ".5Z", ".123456Z", "+14:00", "-15:00", "\n"])


@st.composite
def _near_timestamps(draw: st.DrawFn) -> str:
    """A text of about the accepted form, its fields on and past their edges,
    now and then with a character replaced, removed or added."""
    text = f"{draw(_YEARS)}-{draw(_MONTHS)}-{draw(_DAYS)}"
    if draw(st.booleans()):
        hours, minutes, seconds = draw(_padded(0, 25)), draw(_padded(0, 61)), draw(_padded(0, 61))
        text += f"{draw(st.sampled_from('TTTt '))}{hours}:{minutes}:{seconds}{draw(_SUFFIXES)}"
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        other = draw(_CHARACTERS)
        text = draw(
            st.sampled_from(
                [
                    text[:at] + other + text[at + 1 :],
                    text[:at] + other + text[at:],
                    text[:at] + text[at + 1 :],
                ]
            )
        )
    return text


@settings(max_examples=200, deadline=None)
@given(st.lists(_near_timestamps(), min_size=1, max_size=40))
async def test_sql_and_python_agree_on_near_timestamps(
    conn: asyncpg.Connection, texts: list[str]
) -> None:
    assert await disagreements(conn, texts) == []
