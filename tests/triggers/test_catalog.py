"""Triggers: create, read, list, update, enable, disable, delete, and every
validation rule, against the real workflows service."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2
from runtime.structs import dict_to_struct, struct_to_dict
from tests.support import error_info, rpc_error, violated_fields
from tests.triggers.conftest import (
    INSTANT,
    Suite,
    create_trigger,
    deploy,
    event,
    executions_of,
    new_user,
    settled,
    track,
    unique_type,
)

PRO = {"v": 1, "attr": "plan", "op": "eq", "value": "pro"}


def hours(count: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=3600 * count)


async def test_a_trigger_is_created_read_updated_switched_and_deleted(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    other = await deploy(suite.workflows, INSTANT, active=False)
    kind = unique_type()
    created = await create_trigger(suite.triggers, kind, workflow, PRO)
    assert created.enabled
    assert created.reentry.mode == pb.REENTRY_MODE_EVERY_TIME
    assert struct_to_dict(created.conditions) == PRO
    got = await suite.triggers.GetTrigger(pb.GetTriggerRequest(trigger_id=created.id))
    assert got.trigger == created

    changed = await suite.triggers.UpdateTrigger(
        pb.UpdateTriggerRequest(
            trigger=pb.Trigger(
                id=created.id,
                name="renamed",
                workflow_id=other,
                reentry=pb.ReentryPolicy(mode=pb.REENTRY_MODE_ONCE_PER_PERIOD, period=hours(2)),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "workflow_id", "reentry"]),
        )
    )
    assert (changed.trigger.name, changed.trigger.workflow_id) == ("renamed", other)
    assert changed.trigger.event_type == kind
    assert changed.trigger.reentry.period.seconds == 7200
    assert changed.trigger.update_time.ToDatetime() > created.update_time.ToDatetime()

    disabled = await suite.triggers.DisableTrigger(pb.DisableTriggerRequest(trigger_id=created.id))
    assert not disabled.trigger.enabled
    again = await suite.triggers.DisableTrigger(pb.DisableTriggerRequest(trigger_id=created.id))
    assert not again.trigger.enabled
    enabled = await suite.triggers.EnableTrigger(pb.EnableTriggerRequest(trigger_id=created.id))
    assert enabled.trigger.enabled

    user = await new_user(suite.users, plan="pro")
    await track(suite.triggers, event(user, kind))
    await settled(suite.triggers, created.id, 1)
    await suite.triggers.DeleteTrigger(pb.DeleteTriggerRequest(trigger_id=created.id))
    error = await rpc_error(suite.triggers.GetTrigger(pb.GetTriggerRequest(trigger_id=created.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "TRIGGER_NOT_FOUND"
    assert await executions_of(suite.triggers, user_id=user) == []
    error = await rpc_error(
        suite.triggers.DeleteTrigger(pb.DeleteTriggerRequest(trigger_id=created.id))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_repeated_request_id_returns_the_first_trigger(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    request = pb.CreateTriggerRequest(
        trigger=pb.Trigger(name="once", event_type=unique_type(), workflow_id=workflow),
        request_id=str(uuid.uuid4()),
    )
    first = await suite.triggers.CreateTrigger(request)
    second = await suite.triggers.CreateTrigger(request)
    assert first.trigger.id == second.trigger.id
    request.trigger.name = "changed"
    error = await rpc_error(suite.triggers.CreateTrigger(request))
    assert violated_fields(error) == ["request_id"]


def _bad(**changes: Any) -> pb.Trigger:
    fields: dict[str, Any] = {"name": "t", "event_type": "signup", "workflow_id": "{workflow}"}
    fields.update(changes)
    return pb.Trigger(**fields)


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        (_bad(name=" "), "trigger.name"),
        (_bad(name="x" * 256), "trigger.name"),
        (_bad(event_type=""), "trigger.event_type"),
        (_bad(event_type="Sign Up"), "trigger.event_type"),
        (_bad(event_type="billing..paid"), "trigger.event_type"),
        (_bad(event_type="billing*"), "trigger.event_type"),
        (_bad(event_type="*"), "trigger.event_type"),
        (_bad(event_type="a" * 93), "trigger.event_type"),
        (
            _bad(conditions=dict_to_struct({"attr": "plan", "op": "eq", "value": 1})),
            "trigger.conditions.v",
        ),
        (
            _bad(conditions=dict_to_struct({"v": 1, "attr": "plan", "op": "like", "value": 1})),
            "trigger.conditions.op",
        ),
        (
            _bad(
                conditions=dict_to_struct(
                    {
                        "v": 1,
                        "all": [
                            {"attr": "plan", "op": "eq", "value": "pro"},
                            {"in_segment": str(uuid.uuid4())},
                        ],
                    }
                )
            ),
            "trigger.conditions.all[1].in_segment",
        ),
        (_bad(workflow_id="not-a-uuid"), "trigger.workflow_id"),
        (_bad(workflow_id=""), "trigger.workflow_id"),
        (_bad(workflow_id=str(uuid.uuid4())), "trigger.workflow_id"),
        (_bad(workflow_id="{archived}"), "trigger.workflow_id"),
        (
            _bad(reentry=pb.ReentryPolicy(mode=pb.REENTRY_MODE_ONCE_PER_PERIOD)),
            "trigger.reentry.period",
        ),
        (
            _bad(reentry=pb.ReentryPolicy(mode=pb.REENTRY_MODE_ONCE_PER_USER, period=hours(1))),
            "trigger.reentry.period",
        ),
        (
            _bad(
                reentry=pb.ReentryPolicy(
                    mode=pb.REENTRY_MODE_ONCE_PER_PERIOD, period=hours(24 * 3651)
                )
            ),
            "trigger.reentry.period",
        ),
        (_bad(reentry=pb.ReentryPolicy(mode=9)), "trigger.reentry.mode"),  # type: ignore[arg-type]
    ],
)
async def test_create_refuses_each_invalid_field(
    suite: Suite, trigger: pb.Trigger, field: str
) -> None:
    given = pb.Trigger()
    given.CopyFrom(trigger)
    if given.workflow_id == "{workflow}":
        given.workflow_id = await deploy(suite.workflows, INSTANT)
    elif given.workflow_id == "{archived}":
        given.workflow_id = await deploy(suite.workflows, INSTANT, active=False)
        await suite.workflows.ArchiveWorkflow(
            workflows_pb2.ArchiveWorkflowRequest(workflow_id=given.workflow_id)
        )
    error = await rpc_error(suite.triggers.CreateTrigger(pb.CreateTriggerRequest(trigger=given)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [field]


async def test_update_and_lookups_refuse_bad_input(suite: Suite) -> None:
    workflow = await deploy(suite.workflows, INSTANT)
    trigger = await create_trigger(suite.triggers, unique_type(), workflow)
    cases = [
        (pb.Trigger(id=trigger.id, enabled=False), ["enabled"], "update_mask"),
        (pb.Trigger(id=trigger.id), [], "update_mask"),
        (pb.Trigger(id=trigger.id, event_type="Bad"), ["event_type"], "trigger.event_type"),
        (pb.Trigger(id=trigger.id, workflow_id=str(uuid.uuid4())), None, "trigger.workflow_id"),
        (pb.Trigger(id="nope", name="x"), None, "trigger.id"),
    ]
    for given, paths, field in cases:
        mask = field_mask_pb2.FieldMask(paths=paths) if paths is not None else None
        error = await rpc_error(
            suite.triggers.UpdateTrigger(pb.UpdateTriggerRequest(trigger=given, update_mask=mask))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, given
        assert violated_fields(error) == [field], given
    missing = pb.Trigger(id=str(uuid.uuid4()), name="x")
    error = await rpc_error(suite.triggers.UpdateTrigger(pb.UpdateTriggerRequest(trigger=missing)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for call in (
        suite.triggers.GetTrigger(pb.GetTriggerRequest(trigger_id="x")),
        suite.triggers.EnableTrigger(pb.EnableTriggerRequest(trigger_id="")),
    ):
        error = await rpc_error(call)
        assert violated_fields(error) == ["trigger_id"]
    error = await rpc_error(
        suite.triggers.EnableTrigger(pb.EnableTriggerRequest(trigger_id=str(uuid.uuid4())))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters_and_pages(suite: Suite) -> None:
    first, second = [await deploy(suite.workflows, INSTANT) for _ in range(2)]
    kind = unique_type("billing")
    pattern = f"{kind}.*"
    made = [
        await create_trigger(suite.triggers, pattern, first),
        await create_trigger(suite.triggers, pattern, second),
        await create_trigger(suite.triggers, pattern, first),
    ]
    await suite.triggers.DisableTrigger(pb.DisableTriggerRequest(trigger_id=made[2].id))

    async def ids(**filters: Any) -> list[str]:
        found, token = [], ""
        while True:
            reply = await suite.triggers.ListTriggers(
                pb.ListTriggersRequest(page_size=1, page_token=token, **filters)
            )
            found += [t.id for t in reply.triggers]
            token = reply.next_page_token
            if not token:
                return found

    assert await ids(event_type=pattern) == [t.id for t in made]
    assert await ids(event_type=pattern, workflow_id=first) == [made[0].id, made[2].id]
    assert await ids(event_type=pattern, enabled=True) == [made[0].id, made[1].id]
    assert await ids(event_type=pattern, enabled=False) == [made[2].id]
    assert await ids(workflow_id=second) == [made[1].id]
    page = await suite.triggers.ListTriggers(pb.ListTriggersRequest(page_size=1, workflow_id=first))
    error = await rpc_error(
        suite.triggers.ListTriggers(
            pb.ListTriggersRequest(page_token=page.next_page_token, workflow_id=second)
        )
    )
    assert violated_fields(error) == ["page_token"]
    for request, field in (
        (pb.ListTriggersRequest(event_type="Bad Type"), "event_type"),
        (pb.ListTriggersRequest(workflow_id="x"), "workflow_id"),
        (pb.ListTriggersRequest(page_size=-1), "page_size"),
    ):
        error = await rpc_error(suite.triggers.ListTriggers(request))
        assert violated_fields(error) == [field]
