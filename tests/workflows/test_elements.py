"""Each supported BPMN element in a small process, run through the real
service on a manual clock, with the path it must take."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct, struct_to_dict
from tests.support import error_info, eventually, rpc_error, violated_fields
from tests.workflows.bpmn_docs import (
    boundary,
    call,
    catch,
    chain,
    definitions,
    emit,
    end,
    event_gateway,
    flow,
    linear,
    parallel,
    receive,
    service,
    start,
    subprocess,
    xor,
)
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    events_of,
    execution,
    jobs,
    new_user,
    path,
    publish,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import (
    start as start_execution,
)

COMPLETED = pb.EXECUTION_STATUS_COMPLETED


async def test_none_start_service_task_and_end_complete_in_one_step_with_events(
    wf: Stub, wf_host: ServiceHost
) -> None:
    workflow = await deploy(
        wf, linear(start(), emit("hello", event="welcome_sent", data='{"plan": plan}'), end())
    )
    done = await start_execution(wf, workflow, plan="pro")
    assert done.status == COMPLETED
    assert path(done) == ["start", "hello", "end"]
    events = await events_of(wf_host, done.id)
    assert [e.event_type for e in events] == [
        "execution.started",
        "workflow.welcome_sent",
        "execution.completed",
    ]
    assert struct_to_dict(events[1].data) == {
        "plan": "pro",
        "workflow_id": workflow.id,
        "element_id": "hello",
    }
    assert struct_to_dict(events[0].data) == {
        "workflow_id": workflow.id,
        "workflow_version": "1.0.0",
    }
    stored = await execution(wf, done.id)
    assert stored.completion_time.seconds > 0 and stored.status == COMPLETED


async def test_timer_start_event_keeps_the_execution_pending_until_due(
    wf: Stub, clock: ManualClock
) -> None:
    workflow = await deploy(wf, linear(start(duration="PT2H"), emit("go"), end()))
    waiting = await start_execution(wf, workflow)
    assert waiting.status == pb.EXECUTION_STATUS_PENDING
    await advance(clock, hours=1)
    assert (await execution(wf, waiting.id)).status == pb.EXECUTION_STATUS_PENDING
    await advance(clock, hours=1, seconds=1)
    done = await until_status(wf, waiting.id, COMPLETED)
    assert path(done) == ["start", "go", "end"]


async def test_message_start_event_starts_one_execution_per_user(wf: Stub) -> None:
    name = f"signed_up_{uuid.uuid4().hex[:6]}"
    workflow = await deploy(
        wf, linear(start(message=name), catch("wait", message=f"{name}_next"), end())
    )
    user = str(uuid.uuid4())
    first = await publish(wf, name, user, source="ads")
    again = await publish(wf, name, user)
    assert (first.delivered_count, again.delivered_count) == (1, 0)
    listed = await wf.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=workflow.id, user_id=user)
    )
    assert len(listed.executions) == 1
    assert struct_to_dict(listed.executions[0].variables) == {"source": "ads"}


async def test_exclusive_gateway_takes_the_first_true_condition_or_the_default(
    wf: Stub, wf_users: Any
) -> None:
    bpmn = definitions(
        start(),
        xor("plan", default="to_free"),
        emit("big"),
        emit("pro"),
        emit("free"),
        end("e1"),
        end("e2"),
        end("e3"),
        flow("f0", "start", "plan"),
        flow("to_big", "plan", "big", "seats > 100"),
        flow("to_pro", "plan", "pro", 'user.attributes.plan == "pro"'),
        flow("to_free", "plan", "free"),
        flow("f1", "big", "e1"),
        flow("f2", "pro", "e2"),
        flow("f3", "free", "e3"),
    )
    workflow = await deploy(wf, bpmn)
    pro_user = await new_user(wf_users, plan="pro")
    free_user = await new_user(wf_users, plan="free")
    assert path(await start_execution(wf, workflow, pro_user, seats=500)) == [
        "start",
        "plan",
        "big",
        "e1",
    ]
    assert path(await start_execution(wf, workflow, pro_user, seats=5)) == [
        "start",
        "plan",
        "pro",
        "e2",
    ]
    assert path(await start_execution(wf, workflow, free_user, seats=5)) == [
        "start",
        "plan",
        "free",
        "e3",
    ]


async def test_an_expression_that_fails_is_an_incident_that_resolve_retries(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        xor("g", default="f2"),
        emit("yes"),
        end("e1"),
        end("e2"),
        flow("f0", "start", "g"),
        flow("f1", "g", "yes", "score > 3"),
        flow("f2", "g", "e2"),
        flow("f3", "yes", "e1"),
    )
    workflow = await deploy(wf, bpmn)
    stuck = await start_execution(wf, workflow)
    assert stuck.status == pb.EXECUTION_STATUS_RUNNING
    assert list(stuck.current_node_ids) == ["g"]
    stored = await execution(wf, stuck.id)
    assert len(stored.incidents) == 1 and "score" in stored.incidents[0].error_message
    await wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=stored.incidents[0].id))
    again = await execution(wf, stuck.id)
    assert again.status == pb.EXECUTION_STATUS_RUNNING and len(again.incidents) == 2
    error = await rpc_error(
        wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=stored.incidents[0].id))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_parallel_gateway_forks_and_joins(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        parallel("fork"),
        service("a", "task-a"),
        catch("b", message="b_done"),
        parallel("join"),
        end(),
        flow("f0", "start", "fork"),
        flow("f1", "fork", "a"),
        flow("f2", "fork", "b"),
        flow("f3", "a", "join"),
        flow("f4", "b", "join"),
        flow("f5", "join", "end"),
    )
    workflow = await deploy(wf, bpmn)
    running = await start_execution(wf, workflow)
    assert sorted(running.current_node_ids) == ["a", "b"]
    (job,) = await jobs(wf, "task-a")
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"a": 1}))
    )
    assert sorted((await execution(wf, running.id)).current_node_ids) == ["b", "join"]
    await publish(wf, "b_done", running.user_id, b=2)
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-2:] == ["join", "end"]
    assert struct_to_dict(done.variables) == {"a": 1, "b": 2}


async def test_event_based_gateway_takes_the_first_event(wf: Stub, clock: ManualClock) -> None:
    bpmn = definitions(
        start(),
        event_gateway("gw"),
        catch("login", message="login"),
        catch("timeout", duration="P1D"),
        emit("activated"),
        emit("nudge"),
        end("e1"),
        end("e2"),
        flow("f0", "start", "gw"),
        flow("f1", "gw", "login"),
        flow("f2", "gw", "timeout"),
        flow("f3", "login", "activated"),
        flow("f4", "timeout", "nudge"),
        flow("f5", "activated", "e1"),
        flow("f6", "nudge", "e2"),
    )
    workflow = await deploy(wf, bpmn)
    by_message = await start_execution(wf, workflow)
    by_timer = await start_execution(wf, workflow)
    assert list(by_message.current_node_ids) == ["gw"]
    await publish(wf, "login", by_message.user_id)
    await advance(clock, days=1, seconds=1)
    assert path(await until_status(wf, by_message.id, COMPLETED)) == [
        "start",
        "gw",
        "login",
        "activated",
        "e1",
    ]
    assert path(await until_status(wf, by_timer.id, COMPLETED)) == [
        "start",
        "gw",
        "timeout",
        "nudge",
        "e2",
    ]
    await publish(wf, "login", by_timer.user_id)
    assert path(await execution(wf, by_timer.id)).count("login") == 0


async def test_timer_catch_takes_duration_date_and_expression(wf: Stub, clock: ManualClock) -> None:
    moment = (clock.now().replace(microsecond=0)).isoformat()
    for timer, wait_hours in (
        ({"duration": "PT3H"}, 3),
        ({"date": "=due"}, 5),
        ({"duration": "=wait"}, 7),
    ):
        workflow = await deploy(wf, linear(start(), catch("wait", **timer), end()))

        due = (datetime.fromisoformat(moment) + timedelta(hours=wait_hours)).isoformat()
        running = await start_execution(wf, workflow, due=due, wait=f"PT{wait_hours}H")
        assert list(running.current_node_ids) == ["wait"]
        await advance(clock, hours=wait_hours - 1)
        assert (await execution(wf, running.id)).status == pb.EXECUTION_STATUS_RUNNING
        await advance(clock, hours=1, seconds=1)
        await until_status(wf, running.id, COMPLETED)
        moment = clock.now().replace(microsecond=0).isoformat()


async def test_message_catch_and_receive_task_buffering_and_dedupe(wf: Stub) -> None:
    workflow = await deploy(
        wf, linear(start(), catch("first", message="m1"), receive("second", "m2"), end())
    )
    user = str(uuid.uuid4())
    early = await publish(wf, "m2", user, ttl_seconds=3600, message_id="m2-once", early=True)
    assert (early.delivered_count, early.buffered) == (0, True)
    repeated = await publish(wf, "m2", user, ttl_seconds=3600, message_id="m2-once")
    assert repeated.duplicate
    running = await start_execution(wf, workflow, user)
    assert list(running.current_node_ids) == ["first"]
    lost = await publish(wf, "m1", str(uuid.uuid4()))
    assert lost.delivered_count == 0 and not lost.buffered
    delivered = await publish(wf, "m1", user)
    assert delivered.delivered_count == 1
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done) == ["start", "first", "second", "end"]
    assert struct_to_dict(done.variables) == {"early": True}


def message(
    name: str, user: str, ttl_seconds: int = 0, message_id: str = ""
) -> pb.PublishMessageRequest:
    return pb.PublishMessageRequest(
        name=name,
        correlation_key=user,
        time_to_live=duration_pb2.Duration(seconds=ttl_seconds),
        message_id=message_id,
    )


async def test_publish_messages_answers_each_as_if_published_alone(wf: Stub) -> None:
    workflow = await deploy(wf, linear(start(), catch("once", message="go"), end()))
    twice = await deploy(
        wf, linear(start(), catch("first", message="step"), catch("second", message="step"), end())
    )
    waiting, looping, nobody, erased = (str(uuid.uuid4()) for _ in range(4))
    once = await start_execution(wf, workflow, waiting)
    both = await start_execution(wf, twice, looping)
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=erased))
    key = f"batch-{uuid.uuid4()}"
    reply = await wf.PublishMessages(
        pb.PublishMessagesRequest(
            messages=[
                message("go", waiting, ttl_seconds=60),
                message("go", waiting, ttl_seconds=60),
                message("step", looping),
                message("step", looping),
                message("go", nobody),
                message("go", nobody, ttl_seconds=60, message_id=key),
                message("go", nobody, ttl_seconds=60, message_id=key),
                message("go", erased, ttl_seconds=60),
            ]
        )
    )
    outcomes = [(r.delivered_count, r.buffered, r.duplicate) for r in reply.results]
    assert outcomes == [
        (1, False, False),  # delivered, so not kept for a later subscriber
        (0, True, False),  # the user's second: nobody waits any more, so buffered
        (1, False, False),
        (1, False, False),  # the same execution, waiting again after the first
        (0, False, False),
        (0, True, False),
        (0, False, True),
        (0, False, False),
    ]
    assert (await execution(wf, once.id)).status == COMPLETED
    assert path(await execution(wf, both.id)) == ["start", "first", "second", "end"]

    # A malformed message is answered alone; the others are published.
    fresh = str(uuid.uuid4())
    again = await start_execution(wf, workflow, fresh)
    reply = await wf.PublishMessages(
        pb.PublishMessagesRequest(messages=[message("go", "nope"), message("go", fresh)])
    )
    refused, delivered = reply.results
    assert (refused.error.field, refused.error.reason) == ("correlation_key", "INVALID_MESSAGE")
    assert refused.delivered_count == 0
    assert (delivered.delivered_count, delivered.HasField("error")) == (1, False)
    assert (await execution(wf, again.id)).status == COMPLETED
    error = await rpc_error(wf.PublishMessages(pb.PublishMessagesRequest()))
    assert violated_fields(error) == ["messages"]


async def test_boundary_timer_interrupts_and_cycle_repeats_without_interrupting(
    wf: Stub, clock: ManualClock
) -> None:
    bpmn = definitions(
        start(),
        receive("wait_reply", "reply"),
        boundary("give_up", "wait_reply", duration="P2D"),
        service("work", "long-work"),
        boundary("remind", "work", cycle="R2/PT1H", interrupting=False),
        emit("reminder"),
        end("e_remind"),
        end("e_done"),
        end("e_gave_up"),
        flow("f0", "start", "wait_reply"),
        flow("f1", "wait_reply", "work"),
        flow("f2", "give_up", "e_gave_up"),
        flow("f3", "work", "e_done"),
        flow("f4", "remind", "reminder"),
        flow("f5", "reminder", "e_remind"),
    )
    workflow = await deploy(wf, bpmn)
    gives_up = await start_execution(wf, workflow)
    replies = await start_execution(wf, workflow)
    await publish(wf, "reply", replies.user_id)
    await until_waiting_at(wf, replies.id, "work")

    async def reminders() -> int:
        return path(await execution(wf, replies.id)).count("reminder")

    async def reminded(times: int) -> None:
        async def check() -> bool:
            return await reminders() == times

        await eventually(check)

    for fired in (1, 2):
        await advance(clock, hours=1, seconds=1)
        await reminded(fired)
    # Past when a third repetition would be due; the worker fires timers in due
    # order, so once the two-day timer fired, a third reminder would have too.
    await advance(clock, hours=1, seconds=1)
    await advance(clock, days=2)
    done = await until_status(wf, gives_up.id, COMPLETED)
    assert path(done, "terminated") == ["wait_reply"]
    assert path(done)[-2:] == ["give_up", "e_gave_up"]
    assert await reminders() == 2
    assert list((await execution(wf, replies.id)).current_node_ids) == ["work"]


async def test_boundary_messages_interrupting_and_not(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        service("work", "slow"),
        boundary("note", "work", message="note", interrupting=False),
        boundary("stop", "work", message="stop"),
        emit("noted"),
        end("e1"),
        end("e2"),
        end("e3"),
        flow("f0", "start", "work"),
        flow("f1", "work", "e1"),
        flow("f2", "note", "noted"),
        flow("f3", "noted", "e2"),
        flow("f4", "stop", "e3"),
    )
    workflow = await deploy(wf, bpmn)
    running = await start_execution(wf, workflow)
    await publish(wf, "note", running.user_id)
    await publish(wf, "note", running.user_id)
    still = await execution(wf, running.id)
    assert path(still).count("noted") == 2 and list(still.current_node_ids) == ["work"]
    await publish(wf, "stop", running.user_id)
    done = await execution(wf, running.id)
    assert done.status == COMPLETED and path(done)[-2:] == ["stop", "e3"]
    assert await jobs(wf, "slow", wait=0) == []


async def test_loop_through_a_gateway_back_edge(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        service("count", "counter"),
        xor("again", default="done"),
        end(),
        flow("f0", "start", "count"),
        flow("f1", "count", "again"),
        flow("back", "again", "count", "n < 3"),
        flow("done", "again", "end"),
    )
    workflow = await deploy(wf, bpmn)
    running = await start_execution(wf, workflow, n=0)
    for n in range(1, 4):
        (job,) = await jobs(wf, "counter")
        assert struct_to_dict(job.variables)["n"] == n - 1
        await wf.CompleteJob(
            pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"n": n}))
        )
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done).count("count") == 3


async def test_embedded_subprocess_and_its_interrupting_boundary(
    wf: Stub, clock: ManualClock
) -> None:
    inner = [start("s_in"), catch("in_wait", message="inner"), emit("in_emit"), end("e_in")]
    bpmn = definitions(
        start(),
        subprocess("sub", *inner, *chain("s_in", "in_wait", "in_emit", "e_in", prefix="i")),
        boundary("too_long", "sub", duration="PT10H"),
        end("e_ok"),
        end("e_late"),
        flow("f0", "start", "sub"),
        flow("f1", "sub", "e_ok"),
        flow("f2", "too_long", "e_late"),
    )
    workflow = await deploy(wf, bpmn)
    ok = await start_execution(wf, workflow)
    late = await start_execution(wf, workflow)
    assert sorted(ok.current_node_ids) == ["in_wait", "sub"]
    await publish(wf, "inner", ok.user_id)
    assert path(await execution(wf, ok.id)) == [
        "start",
        "s_in",
        "in_wait",
        "in_emit",
        "e_in",
        "sub",
        "e_ok",
    ]
    await advance(clock, hours=10, seconds=1)
    done = await until_status(wf, late.id, COMPLETED)
    assert path(done, "terminated") == ["in_wait", "sub"]
    assert path(done)[-2:] == ["too_long", "e_late"]


async def test_terminate_end_event_ends_every_branch(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        parallel("fork"),
        catch("forever", message="never"),
        end("stop", terminate=True),
        flow("f0", "start", "fork"),
        flow("f1", "fork", "forever"),
        flow("f2", "fork", "stop"),
        flow("f3", "forever", "stop"),
    )
    done = await start_execution(wf, await deploy(wf, bpmn))
    assert done.status == COMPLETED
    assert path(done, "terminated") == ["forever"]


async def test_call_activity_runs_the_called_workflow_and_returns_its_variables(wf: Stub) -> None:
    child = await deploy(
        wf, linear(start(), service("child_work", "child-job"), end()), name="child"
    )
    parent = await deploy(
        wf, linear(start(), call("call", child.id), emit("after"), end()), name="parent"
    )
    running = await start_execution(wf, parent, x=1)
    assert list(running.current_node_ids) == ["call"]
    (job,) = await jobs(wf, "child-job")
    assert job.workflow_id == child.id and struct_to_dict(job.variables) == {"x": 1}
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"y": 2}))
    )
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done) == ["start", "call", "after", "end"]
    assert struct_to_dict(done.variables) == {"x": 1, "y": 2}
    again = await start_execution(wf, parent)
    await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=again.id))
    children = await wf.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=child.id, user_id=again.user_id)
    )
    assert [c.status for c in children.executions] == [pb.EXECUTION_STATUS_CANCELLED]


async def test_job_errors_retries_backoff_and_incidents(wf: Stub, clock: ManualClock) -> None:
    bpmn = definitions(
        start(),
        service("charge", "charge", retries=2),
        boundary("declined", "charge", error="DECLINED"),
        end("paid"),
        end("refused"),
        flow("f0", "start", "charge"),
        flow("f1", "charge", "paid"),
        flow("f2", "declined", "refused"),
    )
    workflow = await deploy(wf, bpmn)
    caught = await start_execution(wf, workflow)
    (job,) = [j for j in await jobs(wf, "charge") if j.execution_id == caught.id]
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=job.job_key, error_code="DECLINED"))
    assert path(await execution(wf, caught.id))[-2:] == ["declined", "refused"]

    failing = await start_execution(wf, workflow)
    (job,) = await jobs(wf, "charge")
    await wf.FailJob(pb.FailJobRequest(job_key=job.job_key, retries=1, error_message="timeout"))
    assert await jobs(wf, "charge", wait=0) == []
    error = await rpc_error(wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    await advance(clock, seconds=2)
    (job,) = await jobs(wf, "charge")
    await wf.FailJob(pb.FailJobRequest(job_key=job.job_key, retries=0, error_message="card gone"))
    stuck = await execution(wf, failing.id)
    assert stuck.status == pb.EXECUTION_STATUS_RUNNING
    (incident,) = stuck.incidents
    assert (incident.job_key, incident.error_message) == (job.job_key, "card gone")
    await wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=incident.id))
    (job,) = await jobs(wf, "charge")
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=job.job_key, error_code="UNKNOWN_CODE"))
    assert len((await execution(wf, failing.id)).incidents) == 2
    error = await rpc_error(wf.CompleteJob(pb.CompleteJobRequest(job_key=f"{failing.id}.999")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(wf.CompleteJob(pb.CompleteJobRequest(job_key="garbage")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_builtin_tasks_move_the_user_and_update_attributes_once(
    wf: Stub, wf_users: Any
) -> None:
    bpmn = linear(
        start(),
        service("activate", "lifecycle.set_stage", stage="Activation"),
        service(
            "mark", "lifecycle.update_attributes", attributes='{"onboarded": true, "source": src}'
        ),
        end(),
    )
    workflow = await deploy(wf, bpmn)
    user = await new_user(wf_users, plan="free")
    running = await start_execution(wf, workflow, user, src="workflow")
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done) == ["start", "activate", "mark", "end"]
    profile = (await wf_users.GetUser(users_pb2.GetUserRequest(user_id=user))).user
    assert profile.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_ACTIVATION
    assert struct_to_dict(profile.attributes) == {
        "plan": "free",
        "onboarded": True,
        "source": "workflow",
    }
    history = (
        await wf_users.GetLifecycleHistory(users_pb2.GetLifecycleHistoryRequest(user_id=user))
    ).transitions
    moved = [t for t in history if t.workflow_execution_id == running.id]
    assert len(moved) == 1 and moved[0].to_stage == stage_pb2.LIFECYCLE_STAGE_ACTIVATION


async def test_builtin_task_for_a_missing_user_is_an_incident(wf: Stub) -> None:
    workflow = await deploy(
        wf, linear(start(), service("activate", "lifecycle.set_stage", stage="Revenue"), end())
    )
    running = await start_execution(wf, workflow)

    async def has_incident() -> bool:
        return len((await execution(wf, running.id)).incidents) == 1

    await eventually(has_incident)
    assert "NOT_FOUND" in (await execution(wf, running.id)).incidents[0].error_message


async def test_start_is_idempotent_and_follows_the_conflict_policy(wf: Stub) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    user = str(uuid.uuid4())
    request = pb.StartExecutionRequest(
        workflow_id=workflow.id, user_id=user, request_id=str(uuid.uuid4())
    )
    first = await wf.StartExecution(request)
    second = await wf.StartExecution(request)
    assert (second.execution.id, second.existing, first.existing) == (
        first.execution.id,
        True,
        False,
    )
    error = await rpc_error(
        wf.StartExecution(pb.StartExecutionRequest(workflow_id=workflow.id, user_id=user))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).metadata["execution_id"] == first.execution.id
    existing = await wf.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=workflow.id, user_id=user, conflict_policy=pb.CONFLICT_POLICY_USE_EXISTING
        )
    )
    assert (existing.execution.id, existing.existing) == (first.execution.id, True)
    beside = await wf.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=workflow.id, user_id=user, conflict_policy=pb.CONFLICT_POLICY_ALLOW_PARALLEL
        )
    )
    assert beside.execution.id != first.execution.id
    cancelled = await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=first.execution.id))
    assert cancelled.execution.status == pb.EXECUTION_STATUS_CANCELLED
    error = await rpc_error(
        wf.CancelExecution(pb.CancelExecutionRequest(execution_id=first.execution.id))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await wf.ListExecutions(
        pb.ListExecutionsRequest(
            workflow_id=workflow.id,
            user_id=user,
            statuses=[pb.EXECUTION_STATUS_RUNNING],
            page_size=1,
        )
    )
    assert [e.id for e in listed.executions] == [beside.execution.id]


async def test_erase_removes_the_users_executions_and_refuses_later_work(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="later"), end()))
    user = str(uuid.uuid4())
    running = await start_execution(wf, workflow, user)
    await publish(wf, "later_other", user, ttl_seconds=600)
    erased = await wf.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert erased.erased_count == 1
    assert (
        await rpc_error(wf.GetExecution(pb.GetExecutionRequest(execution_id=running.id)))
    ).code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(start_execution(wf, workflow, user))
    assert error_info(error).reason == "USER_ERASED"
    dropped = await publish(wf, "later", user, ttl_seconds=600)
    assert (dropped.delivered_count, dropped.buffered) == (0, False)
    left = await admin.fetchval(
        "SELECT (SELECT count(*) FROM workflows.messages WHERE user_id = $1)"
        " + (SELECT count(*) FROM workflows.execution_history h"
        "    JOIN workflows.workflow_executions e"
        "    ON e.id = h.execution_id WHERE e.user_id = $1)",
        uuid.UUID(user),
    )
    assert left == 0
