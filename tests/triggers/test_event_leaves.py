"""Triggers on what people did: a condition's event leaves count the person's
tracked events of a type, this one included ("fire on purchase when it is
the person's third in 30 days"), from the triggers' own events and, past
their retention, the users service's copy."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from lifecycle.triggers.v1 import triggers_pb2 as pb
from runtime.structs import set_timestamp
from tests.support import eventually
from tests.triggers.conftest import (
    INSTANT,
    Suite,
    create_trigger,
    deploy,
    event,
    new_user,
    settled,
    track,
    unique_type,
)


def nth(kind: str, n: int, window: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """Holds when the person's events of `kind` number exactly `n`."""
    leaf: dict[str, Any] = {"type": kind, "count": {"op": "eq", "value": n}, **more}
    if window is not None:
        leaf["window"] = window
    return {"v": 1, "event": leaf}


def at(given: pb.Event, moment: datetime) -> pb.Event:
    set_timestamp(given.event_time, moment)
    return given


async def fired(suite: Suite, trigger: pb.Trigger, user: str, sent: list[pb.Event]) -> list[bool]:
    """Whether the condition held for each event sent, in order."""
    found = await settled(suite.triggers, trigger.id, len(sent), user)
    met = {execution.message_id: execution.condition_met for execution in found}
    return [met[given.message_id] for given in sent]


async def on_purchases(
    suite: Suite, condition: Callable[[str], dict[str, Any]]
) -> tuple[str, pb.Trigger, str]:
    """A trigger on a new event type, its condition made for that type, and a user."""
    kind = unique_type("purchase")
    workflow = await deploy(suite.workflows, INSTANT)
    trigger = await create_trigger(suite.triggers, kind, workflow, condition(kind))
    return kind, trigger, await new_user(suite.users)


async def test_a_trigger_fires_on_the_persons_third_event_in_30_days_call_by_call(
    suite: Suite,
) -> None:
    kind, trigger, user = await on_purchases(suite, lambda k: nth(k, 3, {"last": "P30D"}))
    sent = [event(user, kind, amount=n) for n in range(4)]
    for given in sent:
        await track(suite.triggers, given)
    assert await fired(suite, trigger, user, sent) == [False, False, True, False]


async def test_events_of_one_call_count_each_with_those_before_it(suite: Suite) -> None:
    kind, trigger, user = await on_purchases(suite, lambda k: nth(k, 3, {"last": "P30D"}))
    other = await new_user(suite.users)
    sent = [event(user, kind), event(other, kind), event(user, kind), event(user, kind)]
    reply = await track(suite.triggers, *sent)
    assert reply.accepted_count == 4
    assert await fired(suite, trigger, user, [sent[0], sent[2], sent[3]]) == [False, False, True]
    assert await fired(suite, trigger, other, [sent[1]]) == [False]


async def test_a_retried_event_is_not_counted_twice(suite: Suite) -> None:
    kind, trigger, user = await on_purchases(suite, lambda k: nth(k, 2))
    first = event(user, kind)
    await track(suite.triggers, first)
    # The retry is a duplicate: stored once, counted once, with the next event.
    reply = await track(suite.triggers, first, event(user, kind))
    assert (reply.accepted_count, reply.duplicate_count) == (1, 1)
    found = await settled(suite.triggers, trigger.id, 2, user)
    assert sorted(e.condition_met for e in found) == [False, True]


async def test_events_outside_the_window_or_not_matching_where_do_not_count(
    suite: Suite,
) -> None:
    big = {"attr": "amount", "op": "gte", "value": 100}
    kind, trigger, user = await on_purchases(suite, lambda k: nth(k, 2, {"last": "P7D"}, where=big))
    now = datetime.now(UTC)
    sent = [
        at(event(user, kind, amount=500), now - timedelta(days=8)),
        event(user, kind, amount=99.5),
        event(user, kind, amount=100),
        event(user, kind, amount=250.25),
    ]
    for given in sent:
        await track(suite.triggers, given)
    assert await fired(suite, trigger, user, sent) == [False, False, False, True]


async def test_events_older_than_the_triggers_retention_are_read_from_the_users_copy(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    """Past the triggers' 30 days, the count reads what the users service keeps:
    the two purchases of 50 days ago count with today's."""
    kind, trigger, user = await on_purchases(suite, lambda k: nth(k, 3, {"last": "P90D"}))
    long_ago = datetime.now(UTC) - timedelta(days=50)
    old = [at(event(user, kind), long_ago), at(event(user, kind), long_ago + timedelta(hours=1))]
    await track(suite.triggers, *old)

    async def delivered() -> bool:
        waiting: int = await admin.fetchval(
            "SELECT count(*) FROM triggers.outbox WHERE topic = 'users.record_user_events'"
        )
        return waiting == 0

    await eventually(delivered)
    today = event(user, kind)
    await track(suite.triggers, today)
    assert await fired(suite, trigger, user, [*old, today]) == [False, False, True]
