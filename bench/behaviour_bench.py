"""A behavioural segment over a large population, beside a hand-written SQL of
the same answer measured in the same run (docs/conditions.md, "What people did").

    python -m bench.behaviour_bench [--users 1000000] [--events 20000000]

The users are loaded as bench.segments_bench loads them; their tracked events
(purchases, logins, page views, invites, payments, spread over 90 days, about
`events / users` a person) are generated in SQL straight into the users
service's `user_events`, indexes built afterwards. Figures:

- RefreshSegment of "bought at least twice in the last week" (a count over a
  7-day window), steady (the members are cached) and first (all enter),
  against the hand-written count of the same people (GROUP BY user_id HAVING
  count(*) >= 2 over the week's purchases), taken in turns. Target: within 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.harness import scratch_database, server_url
from bench.segments_bench import ROUNDS, load_users, services_env, steady_refresh, users_connection
from bench.users_bench import process
from lifecycle.segments.v1 import segments_pb2_grpc
from tests.support import free_port

TWICE_THIS_WEEK = {
    "v": 1,
    "event": {"type": "purchase", "window": {"last": "P7D"}, "count": {"op": "gte", "value": 2}},
}
HAND_WRITTEN_COUNT = """
SELECT count(*) FROM (
  SELECT user_id FROM user_events
  WHERE event_type = 'purchase' AND occurred_at >= now() - interval '7 days'
    AND occurred_at <= now()
  GROUP BY user_id HAVING count(*) >= 2
) buyers
"""
TYPES = "ARRAY['login','login','login','page.view','page.view','purchase','invite','billing.paid']"


async def load_events(database_url: str, users: int, events: int) -> float:
    """About `events` events spread over the users; returns seconds. As the
    administrator, with foreign-key checks off (a restore's way), indexes after."""
    conn = await asyncpg.connect(database_url)
    started = time.perf_counter()
    try:
        await conn.execute("SET search_path = users; SET session_replication_role = replica")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'users'"
            " AND tablename = 'user_events' AND indexname <> 'user_events_pkey'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        # Each person 0 to twice the mean; the length of the email joins the
        # random count to the row, so that it is drawn per person.
        await conn.execute(
            "INSERT INTO user_events (message_id, user_id, event_type, occurred_at, data)"
            " SELECT u.id::text || ':' || g, u.id,"
            f" ({TYPES})[1 + floor(random() * 8)::int],"
            " now() - random() * interval '90 days',"
            " jsonb_build_object('amount', floor(random() * 200)::int)"
            " FROM users u CROSS JOIN LATERAL generate_series(1,"
            " floor(random() * ($1::float8 * 2 + 1) + 0 * length(u.email))::int) g",
            events / users,
        )
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("ANALYZE user_events")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def main(users: int, events: int) -> None:
    with server_url() as url:
        async with scratch_database(url) as database_url:
            users_seconds = await load_users(database_url, users)
            events_seconds = await load_events(database_url, users, events)
            async with users_connection(database_url) as conn:
                loaded = int(await conn.fetchval("SELECT count(*) FROM user_events"))
                count = int(await conn.fetchval(HAND_WRITTEN_COUNT))
                users_port, segments_port = free_port(), free_port()
                env = services_env(database_url, users_port, segments_port)
                async with (
                    process(["-m", "suite.cli", "serve", "users"], env, users_port),
                    process(["-m", "suite.cli", "serve", "segments"], env, segments_port) as ch,
                ):
                    stub = segments_pb2_grpc.SegmentServiceStub(ch)
                    _, cold, first, steady = await steady_refresh(
                        stub, TWICE_THIS_WEEK, lambda: conn.fetchval(HAND_WRITTEN_COUNT), ROUNDS
                    )
                later = int(await conn.fetchval(HAND_WRITTEN_COUNT))
    # No event arrives; people only leave as their purchases age out of the
    # week, a few a second at 20,000,000 events: the first refresh's members
    # lie between the counts taken before and after it.
    assert later <= first.member_count <= count, (later, first.member_count, count)
    limit, refresh = steady["count"], steady["refresh"]
    print(
        f"behavioural segment: {users} users (loaded in {users_seconds:.1f} s), {loaded} events"
        f" (generated in {events_seconds:.1f} s); {count} bought at least twice in the last week"
    )
    print(f"{'hand-written SQL count (limit)':<34} {limit * 1000:9.1f} ms  (medians of {ROUNDS})")
    print(
        f"{'RefreshSegment, steady':<34} {refresh * 1000:9.1f} ms  {refresh / limit:5.2f}x the"
        " limit  (target <= 2x)"
    )
    print(
        f"{'RefreshSegment, first (all enter)':<34} {cold * 1000:9.1f} ms  {cold / limit:5.2f}x"
        f" the limit  ({first.entered_count} entered)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.events))
