"""Signals, escalations, links, correlation keys and calls by BPMN process id
(issue 15, second part), in documents as Camunda Modeler 5 saves them (with
their diagram, zeebe: extensions and modeler attributes), saved through the
service and run against PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import grpc
import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.errors import Violations
from runtime.idempotency import request_key
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct, struct_to_dict
from services.workflows.service import DEFINITION, build_with
from services.workflows.signals import METHOD, SignalBroadcast, Signals
from services.workflows.stepper import Stepper
from tests.support import TRACER_PROVIDER, free_port, rpc_error, service_config, violated_fields
from tests.workflows.bpmn_docs import chain, definitions, end, receive, service, start
from tests.workflows.conftest import (
    Stub,
    deploy,
    execution,
    jobs,
    path,
    refused,
    until_status,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING
CANCELLED = pb.EXECUTION_STATUS_CANCELLED


def document(*elements: str, process_id: str = "Process_1", extras: str = "") -> str:
    """The elements in a process, with the root elements (signals, escalations) `extras`."""
    xml = definitions(*elements, process_id=process_id)
    return xml.replace("<bpmndi:BPMNDiagram", f"{extras}<bpmndi:BPMNDiagram", 1)


def signal_root(name: str, id: str = "Signal_1") -> str:
    return f'<bpmn:signal id="{id}" name="{name}"/>'


def escalation_root(code: str, id: str = "Escalation_1") -> str:
    return f'<bpmn:escalation id="{id}" name="{code} raised" escalationCode="{code}"/>'


def event(kind: str, id: str, definition: str, attributes: str = "") -> str:
    return f'<bpmn:{kind} id="{id}" name="{id.title()}"{attributes}>{definition}</bpmn:{kind}>'


SIGNAL = '<bpmn:signalEventDefinition id="SignalDef_{0}" signalRef="Signal_1"/>'
ESCALATION = '<bpmn:escalationEventDefinition id="EscDef_{0}" escalationRef="Escalation_1"/>'


def link(id: str, name: str) -> str:
    return f'<bpmn:linkEventDefinition id="LinkDef_{id}" name="{name}"/>'


async def broadcast(
    wf: Stub, name: str, *users: str, **variables: Any
) -> pb.BroadcastSignalResponse:
    return await wf.BroadcastSignal(
        pb.BroadcastSignalRequest(
            signal_name=name, variables=dict_to_struct(variables), user_ids=list(users)
        )
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- links


async def test_a_link_throw_event_jumps_to_its_catch_event(wf: Stub) -> None:
    bpmn = document(
        start(),
        event("intermediateThrowEvent", "to_b", link("t", "B")),
        event("intermediateCatchEvent", "from_b", link("c", "B")),
        service("work", "link.work"),
        end(),
        *chain("start", "to_b", prefix="a"),
        *chain("from_b", "work", "end", prefix="b"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    assert list(running.current_node_ids) == ["work"]
    assert path(running) == ["start", "to_b", "from_b"]


async def test_links_that_do_not_resolve_in_their_scope_are_refused(wf: Stub) -> None:
    lone = document(
        start(),
        event("intermediateThrowEvent", "to_b", link("t", "B")),
        event("intermediateCatchEvent", "from_c", link("c", "C")),
        end(),
        *chain("start", "to_b", prefix="a"),
        *chain("from_c", "end", prefix="b"),
    )
    assert "no link catch event in its scope has the name 'B'" in await refused(wf, lone)
    twice = document(
        start(),
        event("intermediateThrowEvent", "to_b", link("t", "B")),
        event("intermediateCatchEvent", "b1", link("c1", "B")),
        event("intermediateCatchEvent", "b2", link("c2", "B")),
        end(),
        end("end2"),
        *chain("start", "to_b", prefix="a"),
        *chain("b1", "end", prefix="b"),
        *chain("b2", "end2", prefix="c"),
    )
    assert "another link catch event in its scope has the name 'B'" in await refused(wf, twice)


# ---------------------------------------------------------------- escalations


def escalating_sub(interrupting: bool, code: str = "up") -> str:
    """A sub-process that throws an escalation then waits for a job; a boundary event on it."""
    cancel = "" if interrupting else ' cancelActivity="false"'
    sub = (
        '<bpmn:subProcess id="sub" name="Sub">'
        '<bpmn:startEvent id="s_start"/>'
        + event("intermediateThrowEvent", "raise", ESCALATION.format("t"))
        + service("inner", "escalation.inner")
        + '<bpmn:endEvent id="s_end"/>'
        + "".join(chain("s_start", "raise", "inner", "s_end", prefix="s"))
        + "</bpmn:subProcess>"
    )
    boundary = event(
        "boundaryEvent", "caught", ESCALATION.format("b"), f' attachedToRef="sub"{cancel}'
    )
    return document(
        start(),
        sub,
        boundary,
        end(),
        end("after_escalation"),
        *chain("start", "sub", "end"),
        *chain("caught", "after_escalation", prefix="e"),
        extras=escalation_root(code),
    )


async def test_an_interrupting_escalation_boundary_ends_the_sub_process(wf: Stub) -> None:
    done = await start_execution(wf, await deploy(wf, escalating_sub(interrupting=True)))
    assert done.status == COMPLETED
    assert "caught" in path(done) and "after_escalation" in path(done)
    assert "sub" in path(done, "terminated")
    assert "inner" not in path(done, "activated")


async def test_a_non_interrupting_escalation_boundary_lets_the_throw_go_on(wf: Stub) -> None:
    running = await start_execution(wf, await deploy(wf, escalating_sub(interrupting=False)))
    assert running.status == RUNNING
    assert list(running.current_node_ids) == ["inner", "sub"]
    assert {"raise", "caught", "after_escalation"} <= set(path(running))


async def test_an_uncaught_escalation_is_no_incident_and_the_throw_completes(wf: Stub) -> None:
    bpmn = document(
        start(),
        event("intermediateThrowEvent", "raise", ESCALATION.format("t")),
        end(),
        *chain("start", "raise", "end"),
        extras=escalation_root("nobody"),
    )
    done = await start_execution(wf, await deploy(wf, bpmn))
    assert done.status == COMPLETED
    assert path(done) == ["start", "raise", "end"]
    assert not done.incidents


def escalating_child(process_id: str) -> str:
    """A child that throws an escalation, then waits for a job before its end."""
    return document(
        start(),
        event("intermediateThrowEvent", "raise", ESCALATION.format("t")),
        service("child_work", "escalation.child"),
        end(),
        *chain("start", "raise", "child_work", "end"),
        process_id=process_id,
        extras=escalation_root("up"),
    )


def calling(process_id: str, boundary: str = "", propagate: str = "", outputs: str = "") -> str:
    attributes = f' propagateAllChildVariables="{propagate}"' if propagate else ""
    call = (
        '<bpmn:callActivity id="call" name="Call"><bpmn:extensionElements>'
        f'<zeebe:calledElement processId="{process_id}"{attributes}/>{outputs}'
        "</bpmn:extensionElements></bpmn:callActivity>"
    )
    extra = [boundary, end("after_escalation"), *chain("caught", "after_escalation", prefix="e")]
    return document(
        start(),
        call,
        end(),
        *chain("start", "call", "end"),
        *(extra if boundary else []),
        process_id=unique("parent"),
        extras=escalation_root("up"),
    )


@pytest.mark.parametrize("interrupting", [True, False])
async def test_an_escalation_of_a_called_execution_reaches_the_call_activity(
    wf: Stub, interrupting: bool
) -> None:
    child_process = unique("child")
    await deploy(wf, escalating_child(child_process))
    cancel = "" if interrupting else ' cancelActivity="false"'
    boundary = event(
        "boundaryEvent",
        "caught",
        '<bpmn:escalationEventDefinition id="EscDef_all"/>',
        f' attachedToRef="call"{cancel}',
    )
    parent = await start_execution(wf, await deploy(wf, calling(child_process, boundary)))
    assert "caught" in path(parent) and "after_escalation" in path(parent)
    if interrupting:
        assert parent.status == COMPLETED
        assert "call" in path(parent, "terminated")
        assert not await jobs(wf, "escalation.child", wait=0.1)
    else:
        assert parent.status == RUNNING and list(parent.current_node_ids) == ["call"]
        (job,) = await jobs(wf, "escalation.child")
        await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
        done = await until_status(wf, parent.id, COMPLETED)
        assert "call" in path(done)


# ---------------------------------------------------------------- call activities


async def test_a_call_activity_names_its_workflow_by_process_id(wf: Stub) -> None:
    child_process = unique("child")
    child = document(
        start(),
        service("child_work", "call.by.process"),
        end(),
        *chain("start", "child_work", "end"),
        process_id=child_process,
    )
    await deploy(wf, child)
    output = (
        '<zeebe:ioMapping><zeebe:output source="=total * 2" target="doubled"/></zeebe:ioMapping>'
    )
    for propagate, expected in (("", {"total": 21, "doubled": 42}), ("false", {"doubled": 42})):
        parent = await start_execution(
            wf, await deploy(wf, calling(child_process, propagate=propagate, outputs=output))
        )
        (job,) = await jobs(wf, "call.by.process")
        await wf.CompleteJob(
            pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"total": 21}))
        )
        done = await until_status(wf, parent.id, COMPLETED)
        assert struct_to_dict(done.variables) == expected


async def test_a_call_by_an_unknown_process_id_is_an_incident(wf: Stub) -> None:
    parent = await start_execution(wf, await deploy(wf, calling(unique("nowhere"))))
    (incident,) = (await execution(wf, parent.id)).incidents
    assert "no active workflow runs the BPMN process" in incident.error_message


# ---------------------------------------------------------------- correlation keys


async def test_a_correlation_key_is_matched_within_the_user(wf: Stub) -> None:
    bpmn = document(
        start(),
        receive("paid", "payment"),
        end(),
        *chain("start", "paid", "end"),
    ).replace(
        '<bpmn:message id="Msg_payment" name="payment"/>',
        '<bpmn:message id="Msg_payment" name="payment"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderId"/></bpmn:extensionElements>'
        "</bpmn:message>",
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, await deploy(wf, bpmn), user, orderId="o-1")

    async def send(correlation_key: str, user_id: str = "") -> pb.PublishMessageResponse:
        request = pb.PublishMessageRequest(
            name="payment", correlation_key=correlation_key, user_id=user_id
        )
        return await wf.PublishMessage(request)

    assert (await send(correlation_key=user)).delivered_count == 0
    assert (await send(user_id=user, correlation_key="o-2")).delivered_count == 0
    assert (await send(user_id=str(uuid.uuid4()), correlation_key="o-1")).delivered_count == 0
    assert (await send(user_id=user, correlation_key="o-1")).delivered_count == 1
    assert (await execution(wf, running.id)).status == COMPLETED


# ---------------------------------------------------------------- signals


def signal_catch(name: str) -> str:
    return document(
        start(),
        event("intermediateCatchEvent", "wake", SIGNAL.format("c")),
        end(),
        *chain("start", "wake", "end"),
        extras=signal_root(name),
    )


async def test_a_broadcast_reaches_every_waiting_execution_in_one_call(wf: Stub) -> None:
    name = unique("wake")
    workflow = await deploy(wf, signal_catch(name))
    waiting = [await start_execution(wf, workflow) for _ in range(40)]
    assert all(list(e.current_node_ids) == ["wake"] for e in waiting)
    reply = await broadcast(wf, name, reason="launch")
    assert reply.delivered_count == 40
    for e in waiting:
        done = await execution(wf, e.id)
        assert done.status == COMPLETED
        assert struct_to_dict(done.variables) == {"reason": "launch"}
    assert (await broadcast(wf, name)).delivered_count == 0


async def test_a_broadcast_stopped_half_way_delivers_on_its_retry(
    wf: Stub, wf_stepper: Stepper
) -> None:
    name = unique("resume")
    workflow = await deploy(wf, signal_catch(name))
    waiting = [await start_execution(wf, workflow) for _ in range(3)]
    request = pb.BroadcastSignalRequest(signal_name=name, request_id=str(uuid.uuid4()))
    signals = Signals(wf_stepper)

    async def stopped(*_: object) -> int:
        raise ConnectionResetError("the service stopped")

    signals._deliver = stopped  # type: ignore[method-assign,assignment]
    key = request_key(request, METHOD, Violations())
    with pytest.raises(ConnectionResetError):
        await signals.broadcast(SignalBroadcast(name, {}, [], key, ()))
    assert [(await execution(wf, e.id)).status for e in waiting] == [RUNNING] * 3
    assert (await wf.BroadcastSignal(request)).delivered_count == 3
    assert [(await execution(wf, e.id)).status for e in waiting] == [COMPLETED] * 3
    assert (await wf.BroadcastSignal(request)).delivered_count == 3  # the answer, again


async def test_a_signal_boundary_event_interrupting_or_not(wf: Stub) -> None:
    name = unique("stop")
    for interrupting in (False, True):
        cancel = "" if interrupting else ' cancelActivity="false"'
        bpmn = document(
            start(),
            service("work", "signal.work"),
            event("boundaryEvent", "stopped", SIGNAL.format("b"), f' attachedToRef="work"{cancel}'),
            end(),
            end("after_signal"),
            *chain("start", "work", "end"),
            *chain("stopped", "after_signal", prefix="s"),
            extras=signal_root(name),
        )
        running = await start_execution(wf, await deploy(wf, bpmn))
        assert (await broadcast(wf, name)).delivered_count == 1
        now = await execution(wf, running.id)
        assert "after_signal" in path(now)
        if interrupting:
            assert now.status == COMPLETED and "work" in path(now, "terminated")
        else:
            assert now.status == RUNNING and list(now.current_node_ids) == ["work"]
            await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=running.id))


async def test_a_signal_start_event_starts_once_per_user_given(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    name = unique("campaign")
    bpmn = document(
        event("startEvent", "start", SIGNAL.format("s")),
        service("work", "signal.started"),
        end(),
        *chain("start", "work", "end"),
        extras=signal_root(name),
    )
    workflow = await deploy(wf, bpmn)
    assert (await broadcast(wf, name)).start_workflow_count == 1
    assert (await broadcast(wf, name)).started_count == 0
    users = [str(uuid.uuid4()) for _ in range(3)]
    request_id = str(uuid.uuid4())
    request = pb.BroadcastSignalRequest(
        signal_name=name,
        user_ids=users,
        request_id=request_id,
        variables=dict_to_struct({"campaign": "spring"}),
    )
    first = await wf.BroadcastSignal(request)
    again = await wf.BroadcastSignal(request)
    assert (first.started_count, again.started_count) == (3, 3)
    count = await admin.fetchval(
        "SELECT count(*) FROM workflows.workflow_executions WHERE workflow_id = $1",
        uuid.UUID(workflow.id),
    )
    assert count == 3
    # A user who runs it already is not started twice.
    assert (await broadcast(wf, name, users[0])).started_count == 0


async def test_a_signal_throw_event_broadcasts_within_the_service(wf: Stub) -> None:
    name = unique("relay")
    waiting = await start_execution(wf, await deploy(wf, signal_catch(name)))
    thrower = document(
        start(),
        event("intermediateThrowEvent", "shout", SIGNAL.format("t")),
        event("endEvent", "end", SIGNAL.format("e")),
        *chain("start", "shout", "end"),
        extras=signal_root(name),
    )
    done = await start_execution(wf, await deploy(wf, thrower))
    assert done.status == COMPLETED
    assert (await execution(wf, waiting.id)).status == COMPLETED


async def test_a_signal_name_may_be_an_expression(wf: Stub) -> None:
    bpmn = signal_catch("=topic")
    running = await start_execution(wf, await deploy(wf, bpmn), topic=unique("topic"))
    topic = struct_to_dict(running.variables)["topic"]
    assert (await broadcast(wf, topic)).delivered_count == 1


async def test_a_broadcast_racing_with_cancellation_delivers_to_what_is_left(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    name = unique("race")
    workflow = await deploy(wf, signal_catch(name))
    waiting = [await start_execution(wf, workflow) for _ in range(20)]
    cancels = [
        wf.CancelExecution(pb.CancelExecutionRequest(execution_id=e.id)) for e in waiting[:10]
    ]
    results = await asyncio.gather(broadcast(wf, name), *cancels, return_exceptions=True)
    reply = results[0]
    assert isinstance(reply, pb.BroadcastSignalResponse)
    statuses = [(await execution(wf, e.id)).status for e in waiting]
    assert statuses.count(COMPLETED) == reply.delivered_count
    assert all(s in (COMPLETED, CANCELLED) for s in statuses)
    assert statuses[10:] == [COMPLETED] * 10
    left = await admin.fetchval(
        "SELECT count(*) FROM workflows.signal_subscriptions WHERE signal_name = $1", name
    )
    assert left == 0


async def test_erase_and_delete_workflow_remove_signal_subscriptions(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    name = unique("gone")
    workflow = await deploy(wf, signal_catch(name))
    user = str(uuid.uuid4())
    await start_execution(wf, workflow, user)
    await start_execution(wf, workflow)

    async def subscriptions() -> int:
        found: int = await admin.fetchval(
            "SELECT count(*) FROM workflows.signal_subscriptions WHERE signal_name = $1", name
        )
        return found

    assert await subscriptions() == 2
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert await subscriptions() == 1
    await wf.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id=workflow.id, force=True))
    assert await subscriptions() == 0


async def test_broadcast_signal_names_each_field_it_refuses(wf: Stub) -> None:
    cases = [
        (pb.BroadcastSignalRequest(), "signal_name"),
        (pb.BroadcastSignalRequest(signal_name="x" * 256), "signal_name"),
        (pb.BroadcastSignalRequest(signal_name="s", user_ids=["nope"]), "user_ids[0]"),
        (
            pb.BroadcastSignalRequest(signal_name="s", user_ids=[str(uuid.uuid4())] * 1001),
            "user_ids",
        ),
        (pb.BroadcastSignalRequest(signal_name="s", request_id="nope"), "request_id"),
    ]
    for request, field in cases:
        error = await rpc_error(wf.BroadcastSignal(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == [field], error.details()


async def test_a_waiting_signal_catch_survives_a_restart(
    wf: Stub, wf_env: dict[str, str], clock: ManualClock
) -> None:
    name = unique("durable")
    running = await start_execution(wf, await deploy(wf, signal_catch(name)))
    env = {**wf_env, "LIFECYCLE_WORKFLOWS_PORT": str(free_port())}
    host = ServiceHost(
        replace(DEFINITION, build=build_with(clock)),
        service_config("workflows", env),
        TRACER_PROVIDER,
    )
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            other = workflows_pb2_grpc.WorkflowServiceStub(channel)
            assert (await broadcast(other, name)).delivered_count == 1
    finally:
        await host.stop()
    assert (await execution(wf, running.id)).status == COMPLETED
