"""A product loaded through the services' APIs, for the console's screenshots
and its benchmark: the demo's catalog (its five workflows, two segments and
five triggers, `suite/demo/catalog.py`, with days of an hour so that no timer
fires while it is looked at), users imported (plan and sessions attributes),
a `signup` event for each (the trigger starts their onboarding: this waits
until it has), a `login` for every fifth (their onboarding moves on), then
the outboxes emptied, the segments refreshed and the metrics rolled up.
Unlike `lifecycle demo`, nothing imports users while workflows move them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import dict_to_struct
from suite.demo.catalog import set_up
from suite.demo.clients import Suite
from suite.registry import DEFINITIONS

BATCH = 1000
PLANS = ("free", "pro", "team")
# An hour a day: the onboarding's timers (days) do not fire while it is looked at.
DAY_SECONDS = 3600.0
# How long the triggers may take to start every onboarding, the outboxes to empty.
PATIENCE_SECONDS = 300


async def _import(suite: Suite, users: int) -> list[str]:
    """`users` users; their ids."""

    async def rows() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        for first in range(0, users, BATCH):
            yield users_pb2.ImportUsersRequest(
                users=[
                    users_pb2.UserImport(
                        email=f"person{n}@example.com",
                        attributes=dict_to_struct({"plan": PLANS[n % 3], "sessions": n % 12}),
                    )
                    for n in range(first, min(users, first + BATCH))
                ]
            )

    await suite.users.ImportUsers(rows())
    ids: list[str] = []
    request = users_pb2.ListUsersRequest(page_size=1000)
    while True:
        page = await suite.users.ListUsers(request)
        ids += [u.id for u in page.users]
        if not page.next_page_token:
            return ids
        request.page_token = page.next_page_token


async def _track(suite: Suite, user_ids: Sequence[str], event_type: str) -> None:
    for first in range(0, len(user_ids), BATCH):
        request = triggers_pb2.TrackEventsRequest()
        for user_id in user_ids[first : first + BATCH]:
            request.events.add(
                user_id=user_id, event_type=event_type, message_id=f"{user_id}/{event_type}"
            )
        await suite.triggers.TrackEvents(request)


async def _started(suite: Suite, workflow_id: str) -> int:
    """How many executions of the workflow passed its start event."""
    counted = await suite.workflows.GetWorkflowStatistics(
        pb.GetWorkflowStatisticsRequest(workflow_id=workflow_id)
    )
    return sum(e.completed for e in counted.elements if e.element_id == "signed_up")


async def _until_started(suite: Suite, workflow_id: str, count: int) -> None:
    """Waits, at most PATIENCE_SECONDS, until `count` executions of the workflow started."""
    for _ in range(PATIENCE_SECONDS):
        if await _started(suite, workflow_id) >= count:
            return
        await asyncio.sleep(1)


async def _caught_up(admin_url: str) -> None:
    """Waits, at most PATIENCE_SECONDS, until the outboxes are empty (what the
    events caused is done), or stop shrinking for ten seconds."""
    counts = " + ".join(f"(SELECT count(*) FROM {schema}.outbox)" for schema in DEFINITIONS)
    conn = await asyncpg.connect(admin_url)
    try:
        seen: list[int] = []
        for _ in range(PATIENCE_SECONDS):
            seen.append(await conn.fetchval(f"SELECT {counts}"))
            if seen[-1] == 0 or seen[-10:] == [seen[-1]] * 10:
                break
            await asyncio.sleep(1)
        print(f"messages left in the outboxes: {seen[-1]:,}")
    finally:
        await conn.close()


async def load(suite: Suite, admin_url: str, users: int) -> int:
    """The product (above); how many onboarding executions started."""
    catalog = await set_up(suite, "demo", DAY_SECONDS)
    ids = await _import(suite, users)
    await _track(suite, ids, "signup")
    onboarding = catalog.workflows["onboarding"]
    await _until_started(suite, onboarding, users)
    await _track(suite, ids[::5], "login")
    await _caught_up(admin_url)
    for segment_id in catalog.segments.values():
        await suite.segments.RefreshSegment(
            segments_pb2.RefreshSegmentRequest(segment_id=segment_id)
        )
    today = datetime.now(UTC).date()
    await suite.metrics.RunRollup(
        metrics_pb2.RunRollupRequest(
            start_date=(today - timedelta(days=29)).isoformat(), end_date=today.isoformat()
        )
    )
    return await _started(suite, onboarding)
