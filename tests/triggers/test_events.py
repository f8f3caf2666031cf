"""Events: validation, users, deduplication, evaluation, re-entry, the cache
following changes on every replica, and what each event is published as."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2

from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.triggers.v1 import triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2
from runtime.structs import dict_to_struct, set_timestamp, struct_to_dict
from tests.support import error_info, eventually, rpc_error, violated_fields
from tests.triggers.conftest import (
    INSTANT,
    ONBOARDING,
    Suite,
    create_trigger,
    deploy,
    event,
    executions_of,
    lifecycle_events,
    new_user,
    serving,
    settled,
    track,
    triggers_host,
    unique_type,
)

PRO_PLAN = {"attr": "plan", "op": "eq", "value": "pro"}
PRO = {"v": 1, **PRO_PLAN}


def _event(**fields: object) -> pb.Event:
    given = pb.Event(user_id=str(uuid.uuid4()), event_type="signup", message_id="m-1")
    for name, value in fields.items():
        if name == "event_time":
            assert isinstance(value, datetime)
            set_timestamp(given.event_time, value)
        elif name == "data":
            given.data.CopyFrom(dict_to_struct(value))  # type: ignore[arg-type]
        else:
            setattr(given, name, value)
    return given


INVALID_EVENTS = [
    (pb.Event(event_type="signup", message_id="m"), "user_id"),
    (_event(user_id="42"), "user_id"),
    (_event(email=""), "email"),
    (_event(email="x" * 250 + "@a.com"), "email"),
    (_event(event_type=""), "event_type"),
    (_event(event_type="Signed Up"), "event_type"),
    (_event(event_type="signup."), "event_type"),
    (_event(event_type="s" * 93), "event_type"),
    (_event(data={"blob": "x" * (32 * 1024)}), "data"),
    (_event(event_time=datetime.now(UTC) + timedelta(days=2)), "event_time"),
    (_event(event_time=datetime(1969, 12, 31, tzinfo=UTC)), "event_time"),
    (_event(message_id=""), "message_id"),
    (_event(message_id="m" * 201), "message_id"),
    (_event(message_id="line\nbreak"), "message_id"),
]


@pytest.mark.parametrize(("given", "field"), INVALID_EVENTS)
async def test_track_event_refuses_each_invalid_field(
    suite: Suite, given: pb.Event, field: str
) -> None:
    error = await rpc_error(suite.triggers.TrackEvent(pb.TrackEventRequest(event=given)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [f"event.{field}"]


async def test_a_batch_reports_each_refused_event_and_stores_the_others(suite: Suite) -> None:
    user = await new_user(suite.users)
    good = [event(user, unique_type()) for _ in range(2)]
    bad = [given for given, _ in INVALID_EVENTS]
    unknown = event(str(uuid.uuid4()), "signup")
    by_email = pb.Event(email="nobody-here@example.com", event_type="signup", message_id="e")
    reply = await track(suite.triggers, good[0], *bad, unknown, by_email, good[1])
    assert reply.accepted_count == 2
    assert reply.duplicate_count == 0
    expected = [(i + 1, field, "INVALID_EVENT") for i, (_, field) in enumerate(INVALID_EVENTS)]
    expected += [
        (len(bad) + 1, "user_id", "USER_NOT_FOUND"),
        (len(bad) + 2, "email", "USER_NOT_FOUND"),
    ]
    assert [(e.index, e.field, e.reason) for e in reply.errors] == expected
    assert reply.errors[0].message_id == "m"
    error = await rpc_error(
        suite.triggers.TrackEvents(pb.TrackEventsRequest(events=[good[0]] * 5001))
    )
    assert violated_fields(error) == ["events"]


async def test_an_unknown_user_is_not_found_and_an_email_names_its_user(suite: Suite) -> None:
    error = await rpc_error(
        suite.triggers.TrackEvent(pb.TrackEventRequest(event=event(str(uuid.uuid4()), "signup")))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "USER_NOT_FOUND"
    user = await new_user(suite.users)
    email = (await suite.users.GetUser(users_pb2.GetUserRequest(user_id=user))).user.email
    reply = await suite.triggers.TrackEvent(
        pb.TrackEventRequest(
            event=pb.Event(email=email.upper(), event_type="signup", message_id=uuid.uuid4().hex)
        )
    )
    assert reply.user_id == user
    assert not reply.duplicate


async def test_a_repeated_message_id_is_evaluated_once(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    trigger = await create_trigger(suite.triggers, kind, workflow)
    user = await new_user(suite.users)
    first = event(user, kind, "dup-" + uuid.uuid4().hex)
    replies = [await suite.triggers.TrackEvent(pb.TrackEventRequest(event=first)) for _ in range(2)]
    assert [r.duplicate for r in replies] == [False, True]
    second = event(user, kind, "dup-" + uuid.uuid4().hex)
    batch = await track(suite.triggers, second, second, first)
    assert (batch.accepted_count, batch.duplicate_count) == (1, 2)
    found = await settled(suite.triggers, trigger.id, 2)
    assert sorted(e.message_id for e in found) == sorted([first.message_id, second.message_id])
    assert len({e.workflow_execution_id for e in found}) == 2


async def test_conditions_read_the_user_the_event_and_the_pattern(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    family = unique_type("billing")
    trigger = await create_trigger(
        suite.triggers,
        f"{family}.*",
        workflow,
        {
            "v": 1,
            "all": [
                PRO_PLAN,
                {"attr": "amount", "src": "event", "op": "gt", "value": 100},
                {"event_type": {"op": "neq", "value": f"{family}.refund"}},
            ],
        },
    )
    pro, free = await new_user(suite.users, plan="pro"), await new_user(suite.users, plan="free")
    await track(
        suite.triggers,
        event(pro, f"{family}.paid", amount=150.5),
        event(pro, f"{family}.paid", amount=99),
        event(pro, f"{family}.refund", amount=500),
        event(free, f"{family}.invoice.paid", amount=500),
        event(pro, f"{family}x.paid", amount=500),
        event(pro, family, amount=500),
    )
    found = await settled(suite.triggers, trigger.id, 4)
    outcomes = sorted(
        (e.event_type, struct_to_dict(e.event_data)["amount"], e.condition_met) for e in found
    )
    assert outcomes == [
        (f"{family}.invoice.paid", 500, False),
        (f"{family}.paid", 99, False),
        (f"{family}.paid", 150.5, True),
        (f"{family}.refund", 500, False),
    ]
    [fired] = [e for e in found if e.condition_met]
    assert fired.workflow_execution_id and not fired.skip_reason
    assert all(not e.workflow_execution_id for e in found if not e.condition_met)


async def test_attribute_changes_and_segment_entries_fire_without_being_recorded_again(
    suite: Suite,
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    plan = f"pro-{uuid.uuid4().hex[:6]}"
    upgraded = await create_trigger(
        suite.triggers,
        "user.attributes_changed",
        workflow,
        {"v": 1, "attr": "plan", "op": "changed_to", "value": plan},
    )
    segment = str(uuid.uuid4())
    entered = await create_trigger(
        suite.triggers,
        "segment.entered",
        workflow,
        {"v": 1, "attr": "segment_id", "src": "event", "op": "eq", "value": segment},
    )
    user = await new_user(suite.users, plan=plan)
    await track(
        suite.triggers,
        event(user, "user.attributes_changed", changes={"plan": {"from": "free", "to": plan}}),
        event(user, "user.attributes_changed", changes={"seats": {"from": None, "to": 3}}),
        event(user, "segment.entered", segment_id=segment),
        event(user, "segment.entered", segment_id=str(uuid.uuid4())),
    )
    # The suite's other tests send their users' attribute changes too: only
    # this user's executions are counted.
    changes = await settled(suite.triggers, upgraded.id, 2, user)
    [change] = [e for e in changes if e.condition_met]
    assert change.workflow_execution_id
    [entry] = [e for e in await settled(suite.triggers, entered.id, 2, user) if e.condition_met]
    assert entry.workflow_execution_id
    await track(suite.triggers, event(user, "signup"))

    async def signup_recorded() -> bool:
        return bool(await lifecycle_events(suite.metrics, user, "tracked.signup"))

    await eventually(signup_recorded)
    recorded = await lifecycle_events(
        suite.metrics,
        user,
        "tracked.user.attributes_changed",
        "tracked.segment.entered",
    )
    assert recorded == []


async def test_a_workflow_that_is_not_active_records_the_firing_and_starts_nothing(
    suite: Suite,
) -> None:
    draft = await deploy(suite.workflows, INSTANT, active=False)
    kind = unique_type()
    trigger = await create_trigger(suite.triggers, kind, draft)
    user = await new_user(suite.users)
    await track(suite.triggers, event(user, kind))
    [found] = await settled(suite.triggers, trigger.id, 1)
    assert found.condition_met
    assert not found.workflow_execution_id
    assert found.skip_reason.startswith("WORKFLOW_NOT_ACTIVE: ")

    async def fired() -> bool:
        return bool(await lifecycle_events(suite.metrics, user, "trigger.fired"))

    await eventually(fired)
    [recorded] = await lifecycle_events(suite.metrics, user, "trigger.fired")
    assert struct_to_dict(recorded.data)["skip_reason"] == found.skip_reason


async def test_the_trigger_cache_follows_changes_at_once_on_every_replica(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    user = await new_user(suite.users)
    env = {**suite.env, "LIFECYCLE_TRIGGERS_PORT": "0"}
    async with (
        serving(triggers_host(env, suite.clock)) as replica,
        grpc.aio.insecure_channel(replica.address) as channel,
    ):
        other = triggers_pb2_grpc.TriggerServiceStub(channel)
        await track(other, event(user, kind))
        trigger = await create_trigger(suite.triggers, kind, workflow)
        await track(other, event(user, kind))
        await suite.triggers.DisableTrigger(pb.DisableTriggerRequest(trigger_id=trigger.id))
        await track(other, event(user, kind))
        await suite.triggers.EnableTrigger(pb.EnableTriggerRequest(trigger_id=trigger.id))
        await track(other, event(user, kind))
        # A change made with SQL reaches the caches as well.
        await admin.execute(
            "UPDATE triggers.triggers SET conditions = $1::text::jsonb WHERE id = $2",
            '{"v": 1, "attr": "plan", "op": "exists"}',
            uuid.UUID(trigger.id),
        )
        await track(other, event(user, kind))
        found = await settled(suite.triggers, trigger.id, 3)
    assert sorted(e.condition_met for e in found) == [False, True, True]


async def test_a_trigger_whose_stored_condition_is_invalid_does_not_stop_the_others(
    suite: Suite, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    broken = await create_trigger(suite.triggers, kind, workflow)
    sound = await create_trigger(suite.triggers, kind, workflow)
    await admin.execute(
        "UPDATE triggers.triggers SET conditions = '{\"v\": 2}' WHERE id = $1",
        uuid.UUID(broken.id),
    )
    user = await new_user(suite.users)
    reply = await track(suite.triggers, event(user, kind))
    assert reply.accepted_count == 1
    assert len(await settled(suite.triggers, sound.id, 1)) == 1
    assert await executions_of(suite.triggers, trigger_id=broken.id) == []


def _policy(mode: int, hours: int = 0) -> pb.ReentryPolicy:
    period = duration_pb2.Duration(seconds=hours * 3600) if hours else None
    return pb.ReentryPolicy(mode=mode, period=period)  # type: ignore[arg-type]


async def test_once_per_user_fires_once_even_for_concurrent_events(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    trigger = await create_trigger(
        suite.triggers, kind, workflow, reentry=_policy(pb.REENTRY_MODE_ONCE_PER_USER)
    )
    user = await new_user(suite.users)
    await asyncio.gather(
        *(
            suite.triggers.TrackEvent(pb.TrackEventRequest(event=event(user, kind)))
            for _ in range(20)
        ),
        track(suite.triggers, *(event(user, kind) for _ in range(5))),
    )
    suite.clock.offset = timedelta(days=60)
    await track(suite.triggers, event(user, kind))
    found = await settled(suite.triggers, trigger.id, 26)
    fired = [e for e in found if not e.skip_reason]
    assert len(fired) == 1
    assert fired[0].workflow_execution_id
    assert {e.skip_reason for e in found} == {"", "REENTRY_LIMIT"}


async def test_once_per_period_fires_again_once_the_period_passed(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    trigger = await create_trigger(
        suite.triggers, kind, workflow, reentry=_policy(pb.REENTRY_MODE_ONCE_PER_PERIOD, hours=1)
    )
    user, other = await new_user(suite.users), await new_user(suite.users)
    await track(suite.triggers, event(user, kind), event(user, kind), event(other, kind))
    suite.clock.offset = timedelta(minutes=59)
    await track(suite.triggers, event(user, kind))
    suite.clock.offset = timedelta(minutes=61)
    await track(suite.triggers, event(user, kind))
    found = await settled(suite.triggers, trigger.id, 5)
    mine = sorted(
        (e.execute_time.ToDatetime(), bool(e.workflow_execution_id))
        for e in found
        if e.user_id == user
    )
    assert [started for _, started in mine] == [False, True, False, True]
    assert [bool(e.workflow_execution_id) for e in found if e.user_id == other] == [True]


async def test_executions_are_listed_by_trigger_and_by_user_newest_first(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    kind = unique_type()
    first = await create_trigger(suite.triggers, kind, workflow)
    second = await create_trigger(suite.triggers, kind, workflow, PRO)
    user = await new_user(suite.users, plan="free")
    for _ in range(3):
        await track(suite.triggers, event(user, kind))
    await settled(suite.triggers, first.id, 3)
    mine = await executions_of(suite.triggers, user_id=user)
    assert len(mine) == 6
    times = [e.execute_time.ToDatetime() for e in mine]
    assert times == sorted(times, reverse=True)
    both = await executions_of(suite.triggers, trigger_id=second.id, user_id=user)
    assert [e.condition_met for e in both] == [False] * 3
    page = await suite.triggers.ListTriggerExecutions(
        pb.ListTriggerExecutionsRequest(user_id=user, page_size=4)
    )
    assert len(page.trigger_executions) == 4
    rest = await suite.triggers.ListTriggerExecutions(
        pb.ListTriggerExecutionsRequest(user_id=user, page_token=page.next_page_token)
    )
    assert len(rest.trigger_executions) == 2
    assert not rest.next_page_token
    for request, field in (
        (pb.ListTriggerExecutionsRequest(), "trigger_id"),
        (pb.ListTriggerExecutionsRequest(user_id="x"), "user_id"),
        (
            pb.ListTriggerExecutionsRequest(trigger_id=first.id, page_token=page.next_page_token),
            "page_token",
        ),
    ):
        error = await rpc_error(suite.triggers.ListTriggerExecutions(request))
        assert violated_fields(error) == [field]


async def test_events_and_firings_are_recorded_in_the_lifecycle_log(suite: Suite) -> None:
    onboarding = await deploy(suite.workflows, ONBOARDING)
    kind = unique_type()
    trigger = await create_trigger(suite.triggers, kind, onboarding)
    user = await new_user(suite.users)
    tracked = event(user, kind, plan="pro")
    await track(suite.triggers, tracked)
    [fired] = await settled(suite.triggers, trigger.id, 1)

    async def recorded() -> bool:
        found = await lifecycle_events(suite.metrics, user, f"tracked.{kind}", "trigger.fired")
        return len(found) == 2

    await eventually(recorded)
    [record] = await lifecycle_events(suite.metrics, user, f"tracked.{kind}")
    assert struct_to_dict(record.data) == {"plan": "pro", "message_id": tracked.message_id}
    assert record.lifecycle_stage != 0
    [fire] = await lifecycle_events(suite.metrics, user, "trigger.fired")
    assert fire.workflow_execution_id == fired.workflow_execution_id
    assert struct_to_dict(fire.data)["trigger_id"] == trigger.id
