"""User tasks (issue 15): a bpmn:userTask made as Camunda Modeler 5 saves it
creates a task record with its assignment and schedule (static or
expressions) while its token waits; ClaimUserTask, UnclaimUserTask,
AssignUserTask and CompleteUserTask work on it; boundary timers escalate;
cancelling, erasing, retention, a new version and a restart of the service
keep the records right."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import quoteattr

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct, struct_to_dict
from services.workflows.service import DEFINITION, build_with
from services.workflows.store import retention
from tests.support import (
    TRACER_PROVIDER,
    eventually,
    free_port,
    rpc_error,
    service_config,
    violated_fields,
)
from tests.workflows.bpmn_docs import HEAD, boundary, definitions, emit, end, flow, linear, start
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    path,
    until_status,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING
CANCELLED = pb.EXECUTION_STATUS_CANCELLED

# A Camunda Modeler 5 document: a user task with an assignment (an expression
# and static lists), a schedule, an input mapping and an output mapping.
MODELER_DOCUMENT = (
    HEAD
    + """  <bpmn:process id="refund_review" name="Refund review" isExecutable="true">
    <bpmn:startEvent id="StartEvent_1" name="Refund asked">
      <bpmn:outgoing>Flow_1</bpmn:outgoing>
    </bpmn:startEvent>
    <bpmn:userTask id="Activity_review" name="Review the refund">
      <bpmn:extensionElements>
        <zeebe:userTask />
        <zeebe:assignmentDefinition assignee="=reviewer" candidateGroups="support, finance"
          candidateUsers="=[&#34;ann&#34;, &#34;bob&#34;]" />
        <zeebe:taskSchedule dueDate="2030-01-03T17:00:00Z"
          followUpDate="=now + duration(&#34;2h&#34;)" />
        <zeebe:ioMapping>
          <zeebe:input source="=amount" target="refund" />
          <zeebe:output source="=approved" target="refund_approved" />
        </zeebe:ioMapping>
      </bpmn:extensionElements>
      <bpmn:incoming>Flow_1</bpmn:incoming>
      <bpmn:outgoing>Flow_2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="Event_done" name="Reviewed">
      <bpmn:incoming>Flow_2</bpmn:incoming>
    </bpmn:endEvent>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="StartEvent_1" targetRef="Activity_review" />
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Activity_review" targetRef="Event_done" />
  </bpmn:process>
  <bpmndi:BPMNDiagram id="BPMNDiagram_1">
    <bpmndi:BPMNPlane id="BPMNPlane_1" bpmnElement="refund_review">
      <bpmndi:BPMNShape id="_BPMNShape_StartEvent_2" bpmnElement="StartEvent_1">
        <dc:Bounds x="179" y="99" width="36" height="36" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNShape id="Activity_review_di" bpmnElement="Activity_review">
        <dc:Bounds x="270" y="77" width="100" height="80" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNShape id="Event_done_di" bpmnElement="Event_done">
        <dc:Bounds x="432" y="99" width="36" height="36" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNEdge id="Flow_1_di" bpmnElement="Flow_1">
        <di:waypoint x="215" y="117" /><di:waypoint x="270" y="117" />
      </bpmndi:BPMNEdge>
      <bpmndi:BPMNEdge id="Flow_2_di" bpmnElement="Flow_2">
        <di:waypoint x="370" y="117" /><di:waypoint x="432" y="117" />
      </bpmndi:BPMNEdge>
    </bpmndi:BPMNPlane>
  </bpmndi:BPMNDiagram>
</bpmn:definitions>
"""
).replace(
    'xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"',
    'xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"'
    ' xmlns:di="http://www.omg.org/spec/DD/20100524/DI"',
)


def user_task(id: str, *, zeebe: bool = True, outputs: dict[str, str] = {}, **attrs: str) -> str:  # noqa: B006
    """A user task as the modeler writes it; `attrs`: assignee, candidateGroups,
    candidateUsers (zeebe:assignmentDefinition), dueDate, followUpDate
    (zeebe:taskSchedule)."""
    assignment = {k: v for k, v in attrs.items() if not k.endswith("Date")}
    schedule = {k: v for k, v in attrs.items() if k.endswith("Date")}
    parts = ["<zeebe:userTask/>" if zeebe else ""]
    if assignment:
        items = " ".join(f"{k}={quoteattr(v)}" for k, v in assignment.items())
        parts.append(f"<zeebe:assignmentDefinition {items}/>")
    if schedule:
        items = " ".join(f"{k}={quoteattr(v)}" for k, v in schedule.items())
        parts.append(f"<zeebe:taskSchedule {items}/>")
    if outputs:
        items = "".join(
            f"<zeebe:output source={quoteattr(s)} target={quoteattr(t)}/>"
            for t, s in outputs.items()
        )
        parts.append(f"<zeebe:ioMapping>{items}</zeebe:ioMapping>")
    inner = "".join(parts)
    extensions = f"<bpmn:extensionElements>{inner}</bpmn:extensionElements>" if inner else ""
    return f'<bpmn:userTask id="{id}" name="{id.title()}">{extensions}</bpmn:userTask>'


async def tasks_of(wf: Stub, execution_id: str, **filters: Any) -> list[pb.UserTask]:
    reply = await wf.ListUserTasks(pb.ListUserTasksRequest(execution_id=execution_id, **filters))
    return list(reply.user_tasks)


async def the_task(wf: Stub, execution_id: str) -> pb.UserTask:
    (task,) = await tasks_of(wf, execution_id)
    return task


async def complete(wf: Stub, task_id: str, **variables: Any) -> pb.UserTask:
    reply = await wf.CompleteUserTask(
        pb.CompleteUserTaskRequest(user_task_id=task_id, variables=dict_to_struct(variables))
    )
    return reply.user_task


def moment(stamp: Any) -> datetime:
    found: datetime = stamp.ToDatetime(tzinfo=UTC)
    return found


# ---------------------------------------------------------------- created and listed


async def test_a_modeler_user_task_is_listed_with_its_assignment_and_schedule(
    wf: Stub, clock: ManualClock
) -> None:
    workflow = await deploy(wf, MODELER_DOCUMENT)
    user = str(uuid.uuid4())
    waiting = await start_execution(wf, workflow, user, reviewer="ann", amount=30)
    assert waiting.status == RUNNING
    assert list(waiting.current_node_ids) == ["Activity_review"]
    task = await the_task(wf, waiting.id)
    assert task.element_id == "Activity_review"
    assert task.workflow_id == workflow.id and task.workflow_version == "1.0.0"
    assert task.user_id == user
    assert task.state == pb.USER_TASK_STATE_ASSIGNED
    assert task.assignee == "ann"
    assert list(task.candidate_groups) == ["support", "finance"]
    assert list(task.candidate_users) == ["ann", "bob"]
    assert moment(task.due_time) == datetime(2030, 1, 3, 17, tzinfo=UTC)
    assert moment(task.follow_up_time) == clock.now() + timedelta(hours=2)
    assert moment(task.create_time) == clock.now()
    assert not task.HasField("completion_time")
    # The input mappings' values, not the execution's.
    assert struct_to_dict(task.variables) == {"refund": 30}

    # Every filter finds it.
    for filters in (
        {"assignee": "ann"},
        {"candidate_group": "finance"},
        {"candidate_user": "bob"},
        {"states": [pb.USER_TASK_STATE_ASSIGNED, pb.USER_TASK_STATE_CREATED]},
        {"user_id": user},
    ):
        assert [t.id for t in await tasks_of(wf, waiting.id, **filters)] == [task.id], filters
    for filters in (
        {"assignee": "bob"},
        {"candidate_group": "sales"},
        {"states": [pb.USER_TASK_STATE_COMPLETED]},
        {"user_id": str(uuid.uuid4())},
    ):
        assert await tasks_of(wf, waiting.id, **filters) == [], filters
    by_user = await wf.ListUserTasks(pb.ListUserTasksRequest(user_id=user))
    assert [t.id for t in by_user.user_tasks] == [task.id]
    got = await wf.GetUserTask(pb.GetUserTaskRequest(user_task_id=task.id))
    assert got.user_task == task

    done = await complete(wf, task.id, approved=True, note="ok")
    assert done.state == pb.USER_TASK_STATE_COMPLETED
    assert moment(done.completion_time) == clock.now()
    finished = await execution(wf, waiting.id)
    assert finished.status == COMPLETED
    assert path(finished) == ["StartEvent_1", "Activity_review", "Event_done"]
    # The completion's variables are merged, then the output mapping runs;
    # the input stays local to the task.
    assert struct_to_dict(finished.variables) == {
        "reviewer": "ann",
        "amount": 30,
        "approved": True,
        "note": "ok",
        "refund_approved": True,
    }


async def test_claim_unclaim_assign_and_complete_move_the_token_on(wf: Stub) -> None:
    # A job-based user task (no zeebe:userTask), unassigned, then a decision.
    bpmn = definitions(
        start(),
        user_task("approve", zeebe=False, candidateGroups="=groups"),
        '<bpmn:exclusiveGateway id="decided" default="to_no"/>',
        emit("yes"),
        emit("no"),
        end("end_yes"),
        end("end_no"),
        flow("f1", "start", "approve"),
        flow("f2", "approve", "decided"),
        flow("to_yes", "decided", "yes", "approved"),
        flow("to_no", "decided", "no"),
        flow("f3", "yes", "end_yes"),
        flow("f4", "no", "end_no"),
    )
    waiting = await start_execution(wf, await deploy(wf, bpmn), groups=["ops"], n=1)
    task = await the_task(wf, waiting.id)
    assert task.state == pb.USER_TASK_STATE_CREATED and task.assignee == ""
    assert list(task.candidate_groups) == ["ops"]
    # Without input mappings, the execution's variables when it was created.
    assert struct_to_dict(task.variables) == {"groups": ["ops"], "n": 1}

    claim = pb.ClaimUserTaskRequest(user_task_id=task.id, assignee="ann")
    claimed = (await wf.ClaimUserTask(claim)).user_task
    assert claimed.state == pb.USER_TASK_STATE_ASSIGNED and claimed.assignee == "ann"
    # Again for the same assignee: nothing changes.
    assert (await wf.ClaimUserTask(claim)).user_task == claimed
    error = await rpc_error(
        wf.ClaimUserTask(pb.ClaimUserTaskRequest(user_task_id=task.id, assignee="bob"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "claimed by 'ann'" in (error.details() or "")

    unclaimed = (
        await wf.UnclaimUserTask(pb.UnclaimUserTaskRequest(user_task_id=task.id))
    ).user_task
    assert unclaimed.state == pb.USER_TASK_STATE_CREATED and unclaimed.assignee == ""
    assigned = (
        await wf.AssignUserTask(pb.AssignUserTaskRequest(user_task_id=task.id, assignee="bob"))
    ).user_task
    assert assigned.assignee == "bob"
    # Assigning overrides whoever has it.
    assigned = (
        await wf.AssignUserTask(pb.AssignUserTaskRequest(user_task_id=task.id, assignee="cy"))
    ).user_task
    assert assigned.assignee == "cy" and assigned.state == pb.USER_TASK_STATE_ASSIGNED
    assert (await execution(wf, waiting.id)).status == RUNNING

    done = await complete(wf, task.id, approved=True)
    assert done.state == pb.USER_TASK_STATE_COMPLETED and done.assignee == "cy"
    finished = await execution(wf, waiting.id)
    assert finished.status == COMPLETED
    assert path(finished) == ["start", "approve", "decided", "yes", "end_yes"]

    # An ended task cannot be completed, claimed or assigned again.
    for call in (
        wf.CompleteUserTask(pb.CompleteUserTaskRequest(user_task_id=task.id)),
        wf.ClaimUserTask(pb.ClaimUserTaskRequest(user_task_id=task.id, assignee="cy")),
        wf.UnclaimUserTask(pb.UnclaimUserTaskRequest(user_task_id=task.id)),
        wf.AssignUserTask(pb.AssignUserTaskRequest(user_task_id=task.id, assignee="x")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is completed" in (error.details() or "")


async def test_list_pages_newest_first(wf: Stub) -> None:
    workflow = await deploy(wf, linear(start(), user_task("todo"), end()))
    user = str(uuid.uuid4())
    started = []
    for n in range(3):
        begun = await wf.StartExecution(
            pb.StartExecutionRequest(
                workflow_id=workflow.id,
                user_id=user,
                variables=dict_to_struct({"n": n}),
                conflict_policy=pb.CONFLICT_POLICY_ALLOW_PARALLEL,
            )
        )
        started.append(begun.execution.id)
    seen: list[str] = []
    token = ""
    while True:
        reply = await wf.ListUserTasks(
            pb.ListUserTasksRequest(user_id=user, page_size=2, page_token=token)
        )
        seen += [t.execution_id for t in reply.user_tasks]
        token = reply.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(started) and len(seen) == 3
    # A token is bound to its filters.
    first = await wf.ListUserTasks(pb.ListUserTasksRequest(user_id=user, page_size=1))
    error = await rpc_error(
        wf.ListUserTasks(pb.ListUserTasksRequest(page_size=1, page_token=first.next_page_token))
    )
    assert violated_fields(error) == ["page_token"]


# ---------------------------------------------------------------- refused


async def test_bad_requests_name_their_fields_and_unknown_tasks_are_not_found(wf: Stub) -> None:
    cases: list[tuple[Any, list[str]]] = [
        (wf.GetUserTask(pb.GetUserTaskRequest(user_task_id="nope")), ["user_task_id"]),
        (wf.GetUserTask(pb.GetUserTaskRequest()), ["user_task_id"]),
        (
            wf.ClaimUserTask(pb.ClaimUserTaskRequest(user_task_id="x", assignee=" ")),
            ["user_task_id", "assignee"],
        ),
        (
            wf.AssignUserTask(
                pb.AssignUserTaskRequest(user_task_id=str(uuid.uuid4()), assignee="a" * 256)
            ),
            ["assignee"],
        ),
        (wf.UnclaimUserTask(pb.UnclaimUserTaskRequest(user_task_id="1")), ["user_task_id"]),
        (
            wf.CompleteUserTask(
                pb.CompleteUserTaskRequest(
                    user_task_id=str(uuid.uuid4()), variables=dict_to_struct({"vars": 1})
                )
            ),
            ["variables"],
        ),
        (
            wf.ListUserTasks(
                pb.ListUserTasksRequest(
                    user_id="u",
                    execution_id="e",
                    states=[pb.UserTaskState.ValueType(9)],
                    candidate_group="g" * 300,
                )
            ),
            ["candidate_group", "states[0]", "user_id", "execution_id"],
        ),
        (wf.ListUserTasks(pb.ListUserTasksRequest(page_size=-1)), ["page_size"]),
    ]
    for call, fields in cases:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert sorted(violated_fields(error)) == sorted(fields)
    missing = str(uuid.uuid4())
    for call in (
        wf.GetUserTask(pb.GetUserTaskRequest(user_task_id=missing)),
        wf.ClaimUserTask(pb.ClaimUserTaskRequest(user_task_id=missing, assignee="a")),
        wf.UnclaimUserTask(pb.UnclaimUserTaskRequest(user_task_id=missing)),
        wf.AssignUserTask(pb.AssignUserTaskRequest(user_task_id=missing, assignee="a")),
        wf.CompleteUserTask(pb.CompleteUserTaskRequest(user_task_id=missing)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert missing in (error.details() or "")


async def test_completing_with_variables_too_large_is_refused_and_the_task_stays_open(
    wf: Stub,
) -> None:
    waiting = await start_execution(wf, await deploy(wf, linear(start(), user_task("t"), end())))
    task = await the_task(wf, waiting.id)
    error = await rpc_error(complete(wf, task.id, big="x" * 70_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["variables"]
    assert (await the_task(wf, waiting.id)).state == pb.USER_TASK_STATE_CREATED


async def test_bad_static_attributes_are_refused_when_saved(wf: Stub) -> None:
    bpmn = linear(start(), user_task("t", dueDate="tomorrow", assignee="a" * 300), end())
    error = await rpc_error(
        wf.CreateWorkflow(pb.CreateWorkflowRequest(workflow=pb.Workflow(name="x", bpmn_xml=bpmn)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["workflow.bpmn_xml", "workflow.bpmn_xml"]
    details = error.details() or ""
    assert "element 't': dueDate (zeebe:taskSchedule)" in details
    assert "element 't': assignee (zeebe:assignmentDefinition) must be at most 255" in details


async def test_an_attribute_expression_that_fails_is_an_incident_naming_it(wf: Stub) -> None:
    bpmn = linear(start(), user_task("t", assignee="=who"), end())
    waiting = await start_execution(wf, await deploy(wf, bpmn), who=42)

    async def incident() -> bool:
        return bool((await execution(wf, waiting.id)).incidents)

    await eventually(incident)
    (found,) = (await execution(wf, waiting.id)).incidents
    assert found.element_id == "t"
    assert "assignee (zeebe:assignmentDefinition) must be a string, not int" in found.error_message
    assert await tasks_of(wf, waiting.id) == []


# ---------------------------------------------------------------- escalation and cancel


def escalated(interrupting: bool) -> str:
    return definitions(
        start(),
        user_task("review"),
        boundary("late", "review", duration="PT1H", interrupting=interrupting),
        emit("remind"),
        end("reviewed"),
        end("escalated"),
        flow("f1", "start", "review"),
        flow("f2", "review", "reviewed"),
        flow("f3", "late", "remind"),
        flow("f4", "remind", "escalated"),
    )


async def test_an_interrupting_boundary_timer_cancels_the_task(
    wf: Stub, clock: ManualClock
) -> None:
    waiting = await start_execution(wf, await deploy(wf, escalated(interrupting=True)))
    task = await the_task(wf, waiting.id)
    await advance(clock, hours=1, seconds=1)
    finished = await until_status(wf, waiting.id, COMPLETED)
    assert path(finished) == ["start", "late", "remind", "escalated"]
    cancelled = await the_task(wf, waiting.id)
    assert cancelled.id == task.id and cancelled.state == pb.USER_TASK_STATE_CANCELLED
    assert moment(cancelled.completion_time) == clock.now()
    error = await rpc_error(complete(wf, task.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is cancelled" in (error.details() or "")


async def test_a_non_interrupting_boundary_timer_reminds_while_the_task_stays_open(
    wf: Stub, clock: ManualClock
) -> None:
    waiting = await start_execution(wf, await deploy(wf, escalated(interrupting=False)))
    task = await the_task(wf, waiting.id)
    await advance(clock, hours=1, seconds=1)

    async def reminded() -> bool:
        return "remind" in path(await execution(wf, waiting.id))

    await eventually(reminded)
    still = await execution(wf, waiting.id)
    assert still.status == RUNNING and list(still.current_node_ids) == ["review"]
    assert (await the_task(wf, waiting.id)).state == pb.USER_TASK_STATE_CREATED
    await complete(wf, task.id)
    finished = await execution(wf, waiting.id)
    assert finished.status == COMPLETED
    assert path(finished) == ["start", "late", "remind", "escalated", "review", "reviewed"]


async def test_cancelling_the_execution_cancels_its_tasks(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        '<bpmn:parallelGateway id="fork"/>',
        user_task("a", assignee="ann"),
        user_task("b"),
        '<bpmn:parallelGateway id="join"/>',
        end(),
        flow("f1", "start", "fork"),
        flow("f2", "fork", "a"),
        flow("f3", "fork", "b"),
        flow("f4", "a", "join"),
        flow("f5", "b", "join"),
        flow("f6", "join", "end"),
    )
    workflow = await deploy(wf, bpmn)
    waiting = await start_execution(wf, workflow)
    assert len(await tasks_of(wf, waiting.id)) == 2
    await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=waiting.id))
    states = {t.element_id: t.state for t in await tasks_of(wf, waiting.id)}
    assert states == {"a": pb.USER_TASK_STATE_CANCELLED, "b": pb.USER_TASK_STATE_CANCELLED}
    # Deleting the workflow deletes its executions' tasks; so does a forced delete
    # of a workflow whose tasks are open.
    await wf.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id=workflow.id))
    assert await tasks_of(wf, waiting.id) == []
    workflow = await deploy(wf, bpmn)
    waiting = await start_execution(wf, workflow)
    await wf.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id=workflow.id, force=True))
    assert await tasks_of(wf, waiting.id) == []


# ---------------------------------------------------------------- erase, retention, versions


async def test_an_erase_deletes_the_users_tasks(wf: Stub) -> None:
    user = str(uuid.uuid4())
    waiting = await start_execution(
        wf, await deploy(wf, linear(start(), user_task("t"), end())), user
    )
    task = await the_task(wf, waiting.id)
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert (await wf.ListUserTasks(pb.ListUserTasksRequest(user_id=user))).user_tasks == []
    error = await rpc_error(wf.GetUserTask(pb.GetUserTaskRequest(user_task_id=task.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(complete(wf, task.id))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_retention_deletes_the_tasks_of_the_executions_it_deletes(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    waiting = await start_execution(wf, await deploy(wf, linear(start(), user_task("t"), end())))
    task = await the_task(wf, waiting.id)
    await complete(wf, task.id)
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    await admin.execute(
        "UPDATE workflows.workflow_executions SET completed_at = $2 WHERE id = $1",
        uuid.UUID(waiting.id),
        long_ago,
    )
    async with admin.transaction():
        await admin.execute("SET LOCAL search_path TO workflows")
        assert await retention.delete_finished(admin, long_ago + timedelta(days=1), 1000) == 1
    assert await tasks_of(wf, waiting.id) == []


async def test_open_tasks_of_an_old_version_complete_on_it(wf: Stub) -> None:
    first = linear(start(), user_task("t"), emit("old"), end())
    workflow = await deploy(wf, first)
    waiting = await start_execution(wf, workflow)
    task = await the_task(wf, waiting.id)
    updated = await wf.UpdateWorkflow(
        pb.UpdateWorkflowRequest(
            workflow=pb.Workflow(
                id=workflow.id, bpmn_xml=linear(start(), user_task("t2"), emit("new"), end())
            )
        )
    )
    assert updated.workflow.version == "1.1.0"
    await complete(wf, task.id)
    finished = await execution(wf, waiting.id)
    assert finished.status == COMPLETED
    assert path(finished) == ["start", "t", "old", "end"]
    assert task.workflow_version == "1.0.0"


async def test_a_task_survives_a_restart_of_the_service(
    wf_env: dict[str, str], wf_users: Any, clock: ManualClock
) -> None:
    definition = replace(DEFINITION, build=build_with(clock))

    async def host() -> ServiceHost:
        env = {**wf_env, "LIFECYCLE_WORKFLOWS_PORT": str(free_port())}
        started = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
        await started.start()
        return started

    first = await host()
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await deploy(stub, linear(start(), user_task("t"), end()))
            waiting = await start_execution(stub, workflow, n=1)
            task = await the_task(stub, waiting.id)
    finally:
        await first.stop()
    second = await host()
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            assert (await the_task(stub, waiting.id)).id == task.id
            await stub.ClaimUserTask(pb.ClaimUserTaskRequest(user_task_id=task.id, assignee="a"))
            await complete(stub, task.id, n=2)
            finished = await execution(stub, waiting.id)
            assert finished.status == COMPLETED
            assert struct_to_dict(finished.variables) == {"n": 2}
    finally:
        await second.stop()
