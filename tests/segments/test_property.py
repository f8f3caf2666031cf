"""Python and SQL agree: generated conditions over generated users, on a real
PostgreSQL, through the code the services run (the users service's SQL and
messages, the segments service's Python evaluator), on who matches, when time
alone may end each match, and when it may make each other user match (and the
earliest of those, MatchUserIds' next entry). Each example inserts its users
once and evaluates several conditions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.segments.behaviour_strategies import BEHAVIOUR_CONDITIONS, PEOPLE
from tests.segments.engines import (
    CAP,
    StoredUser,
    condition_of,
    insert_users,
    python_verdicts,
    sql_verdicts,
    users_connection,
)
from tests.segments.strategies import (
    AS_OF,
    CONDITIONS,
    TIME_CONDITIONS,
    TIMED_USERS,
    USERS,
)
from tests.support import ScratchDatabase

pytestmark = pytest.mark.users


@pytest.fixture(scope="module")
async def conn(segments_database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    async with users_connection(segments_database) as connection:
        yield connection


# Conditions of the whole language over users full of odd values, and conditions
# of what time changes, combined, over users who always have timestamps.
EXAMPLES = st.one_of(
    st.tuples(
        st.lists(USERS, min_size=4, max_size=24), st.lists(CONDITIONS, min_size=1, max_size=10)
    ),
    st.tuples(
        st.lists(TIMED_USERS, min_size=4, max_size=12),
        st.lists(TIME_CONDITIONS, min_size=1, max_size=5),
    ),
    # What people did: event leaves over event histories (docs/conditions.md).
    st.tuples(
        st.lists(PEOPLE, min_size=4, max_size=12),
        st.lists(BEHAVIOUR_CONDITIONS, min_size=1, max_size=5),
    ),
)


# An `all` under a `not` under an `any` (in SQL, a LEAST of flips negated in a
# GREATEST). The `all` holds (t and n are in their windows until n leaves in 12 hours), so
# the `not` fails; so does the creation window until the user is created, a
# second after AS_OF: the `any` fails, and its next entry is that second.
_NESTED = (
    [
        StoredUser(
            {"t": "2025-05-31T23:00:00Z", "n": "2025-05-31T12:00:00Z"},
            created_at=AS_OF + timedelta(seconds=1),
        )
    ],
    [
        {
            "v": 1,
            "any": [
                {
                    "not": {
                        "all": [{"attr": key, "op": "within_last", "value": "P1D"} for key in "tn"]
                    }
                },
                {"created_at": {"op": "within_last", "value": "P1D"}},
            ],
        }
    ],
)


# A count under a `not`: its set of people with enough events is dropped (it
# selects nobody's entry there), and every parameter must still be bound in SQL.
_NOT_A_COUNT = (
    [StoredUser({})] * 4,
    [{"v": 1, "not": {"event": {"type": "purchase", "count": {"op": "gt", "value": 0}}}}],
)
# Anchored windows on their edges: the purchase at the end of the 14 days after
# "t" counts, the one a microsecond before "t" does not; before "t", the reverse.
_EDGE = AS_OF - timedelta(days=14)
_ANCHORED = (
    [
        StoredUser(
            {"t": "2025-05-18T00:00:00Z"},
            events=(
                ("purchase", AS_OF, {}),
                ("purchase", _EDGE - timedelta(microseconds=1), {}),
            ),
        ),
        StoredUser({"t": "2025-05-18"}, events=(("purchase", _EDGE, {}),)),
        StoredUser({"t": 17}, events=(("purchase", _EDGE, {}),)),
        StoredUser({}, created_at=_EDGE, events=(("purchase", _EDGE, {}),)),
    ],
    [
        {
            "v": 1,
            "event": {
                "type": "purchase",
                "window": {"within": "P14D", side: anchor},
                "count": {"op": "eq", "value": 1},
            },
        }
        for side in ("after", "before")
        for anchor in ({"attr": "t"}, "created_at")
    ],
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(EXAMPLES)
@example(_NESTED)
@example(_NOT_A_COUNT)
@example(_ANCHORED)
async def test_python_and_sql_agree_on_members_validity_and_entries(
    conn: asyncpg.Connection, example: tuple[list[StoredUser], list[dict[str, Any]]]
) -> None:
    users, conditions = example
    ids = await insert_users(conn, users, AS_OF)
    for data in conditions:
        condition = condition_of(data)
        sql = await sql_verdicts(conn, condition, ids, AS_OF, AS_OF + CAP)
        python = await python_verdicts(conn, condition, ids, AS_OF, AS_OF + CAP)
        assert python.members == sql.members, data
        assert python.valid_until == sql.valid_until, data
        assert python.next_entry == sql.next_entry, data
        assert python.earliest_entry == sql.earliest_entry, data
