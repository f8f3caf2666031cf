"""The users service's match statements use the GIN index on users.attributes
for containment (`eq`, and `in` as a BitmapOr), as PostgreSQL plans them on a
few thousand analysed users of varied attributes, in a database of their own."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from conditions import compile_sql
from services.users import store
from tests.segments.engines import StoredUser, condition_of, insert_users, users_connection
from tests.support import ScratchDatabase

pytestmark = pytest.mark.users

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
# Rare plans are what an index serves: a condition on a common one reads most pages anyway.
PLANS = {"free": 600, "pro": 250, "team": 100, "trial": 40, "enterprise": 5, "legacy": 5}
INDEX = "idx_users_attributes"


def _user(rng: random.Random, n: int) -> StoredUser:
    seen = AS_OF - timedelta(minutes=rng.randrange(60 * 24 * 90))
    attributes = {
        "plan": rng.choices(list(PLANS), weights=list(PLANS.values()))[0],
        "country": rng.choice(["DE", "FR", "US", "BR", "IN", "JP", "GB", "ES", "IT", "NL"]),
        "seats": rng.randrange(1, 50),
        "seen": seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "email": f"u{n}@{rng.choice(['example.com', 'acme.io', 'corp.de'])}",
    }
    return StoredUser(attributes, created_at=AS_OF - timedelta(days=rng.randrange(365)))


@pytest.fixture(scope="module")
async def conn(own_database: ScratchDatabase) -> AsyncIterator[asyncpg.Connection]:
    async with users_connection(own_database) as connection:
        rng = random.Random(5)
        await insert_users(connection, [_user(rng, n) for n in range(5000)], AS_OF)
        # New rows' GIN entries wait in the index's pending list, which every scan
        # reads whole, until a vacuum (autovacuum in production) merges them.
        await connection.execute(f"SELECT gin_clean_pending_list('{INDEX}'::regclass)")
        await connection.execute("ANALYZE users")
        yield connection


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(conn: asyncpg.Connection, statement: tuple[str, list[Any]]) -> dict[str, Any]:
    sql, params = statement
    # The connection decodes json: the plan arrives as a list.
    [explained] = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
    return dict(explained["Plan"])


def _index_scans(node: dict[str, Any]) -> list[str]:
    return [n.get("Index Name", "") for n in _nodes(node) if n["Node Type"] == "Bitmap Index Scan"]


def _query(data: dict[str, Any]) -> store.MatchQuery:
    return store.MatchQuery(compile_sql(condition_of({"v": 1, **data}), AS_OF), next_entry=True)


def _statement(query: store.MatchQuery, *, candidates: bool = False) -> tuple[str, list[Any]]:
    return store.match_statement(query, candidates=candidates)


EQ = {"attr": "plan", "op": "eq", "value": "enterprise"}
IN = {"attr": "plan", "op": "in", "value": ["enterprise", "legacy"]}
WINDOW = {"attr": "seen", "op": "within_last", "value": "P7D"}


@pytest.mark.parametrize("data", [EQ, {"all": [EQ, {"attr": "seats", "op": "gt", "value": 3}]}])
async def test_eq_is_a_bitmap_index_scan_of_the_gin_index(
    conn: asyncpg.Connection, data: dict[str, Any]
) -> None:
    assert _index_scans(await _plan(conn, _statement(_query(data)))) == [INDEX]


async def test_in_is_a_bitmap_or_of_gin_index_scans(conn: asyncpg.Connection) -> None:
    plan = await _plan(
        conn,
        _statement(_query(IN)),
    )
    [either] = [node for node in _nodes(plan) if node["Node Type"] == "BitmapOr"]
    assert _index_scans(either) == [INDEX, INDEX]


async def test_the_scan_for_later_entries_uses_the_index_for_what_time_never_changes(
    conn: asyncpg.Connection,
) -> None:
    query = _query({"all": [EQ, WINDOW]})
    plan = await _plan(conn, _statement(query, candidates=True))
    assert _index_scans(plan) == [INDEX]


@pytest.mark.parametrize("window", [{"window": {"last": "P7D"}}, {}], ids=["timed", "timeless"])
async def test_a_count_reads_the_events_once_for_its_set_and_once_per_candidate(
    conn: asyncpg.Connection, window: dict[str, Any]
) -> None:
    # The set of people with enough events filters the users before the
    # per-person lateral; a second copy of it in the test was a second scan of
    # the events (a hashed subplan), and without it every user is probed.
    count = {"event": {"type": "purchase", **window, "count": {"op": "gte", "value": 2}}}
    for candidates in (True, False):
        plan = await _plan(conn, _statement(_query(count), candidates=candidates))
        scans = [n for n in _nodes(plan) if n.get("Relation Name") == "user_events"]
        assert len(scans) == 2, plan
