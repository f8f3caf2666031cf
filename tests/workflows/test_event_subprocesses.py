"""Event sub-processes and error end events (issue 15), in documents as
Camunda Modeler 5 saves them, saved through the service and run against
PostgreSQL: each trigger, interrupting or not, in the process and in an
embedded sub-process; errors from ThrowError and error end events, boundary
events first; races; a restart; erase and DeleteWorkflow."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from services.workflows.service import DEFINITION, build_with
from tests.support import TRACER_PROVIDER, free_port, service_config
from tests.workflows.bpmn_docs import flow
from tests.workflows.bpmn_esp_docs import (
    document,
    error_end,
    escalation_end,
    esp,
    on_error,
    on_escalation,
    on_message,
    on_signal,
    on_timer,
)
from tests.workflows.bpmn_multi import job
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    jobs,
    path,
    publish,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING


class Names:
    """Job types, messages and signals of one test, apart from the others'."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.work = f"work-{tag}"
        self.handle = f"handle-{tag}"
        self.message = f"msg-{tag}"
        self.signal = f"sig-{tag}"


def handler(names: Names, trigger: str, *, interrupting: bool = True, id: str = "h") -> str:
    return esp(
        id,
        trigger,
        job(f"{id}_job", names.handle),
        f'<bpmn:endEvent id="{id}_end"/>',
        flow(f"{id}_f1", f"{id}_start", f"{id}_job"),
        flow(f"{id}_f2", f"{id}_job", f"{id}_end"),
        interrupting=interrupting,
    )


def main(names: Names, *extra: str, signal: str = "", escalation: str = "") -> str:
    """start → work (a job) → end, with `extra` beside."""
    return document(
        '<bpmn:startEvent id="start"/>',
        job("work", names.work),
        '<bpmn:endEvent id="end"/>',
        flow("m1", "start", "work"),
        flow("m2", "work", "end"),
        *extra,
        signal=signal,
        escalation=escalation,
    )


def in_sub(names: Names, *inside: str, after_work: str = "s_end") -> str:
    """start → sub (start → work → `after_work`, with `inside`) → end."""
    return document(
        '<bpmn:startEvent id="start"/>',
        '<bpmn:subProcess id="sub"><bpmn:startEvent id="s_start"/>',
        job("work", names.work),
        '<bpmn:endEvent id="s_end"/>' if after_work == "s_end" else "",
        flow("s1", "s_start", "work"),
        flow("s2", "work", after_work),
        *inside,
        "</bpmn:subProcess>",
        '<bpmn:endEvent id="end"/>',
        flow("m1", "start", "sub"),
        flow("m2", "sub", "end"),
    )


async def complete_all(wf: Stub, job_type: str, expected: int) -> None:
    found = await jobs(wf, job_type)
    assert len(found) == expected, found
    for item in found:
        await wf.CompleteJob(pb.CompleteJobRequest(job_key=item.job_key))


async def test_an_interrupting_message_event_subprocess(wf: Stub) -> None:
    names = Names()
    workflow = await deploy(wf, main(names, handler(names, on_message(names.message))))
    user = str(uuid.uuid4())
    running = await start_execution(wf, workflow, user)
    assert sorted(running.current_node_ids) == ["h_start", "work"]
    reply = await publish(wf, names.message, user, reason="asked")
    assert reply.delivered_count == 1
    await until_waiting_at(wf, running.id, "h", "h_job")
    assert await jobs(wf, names.work, wait=0.1) == []  # its job went with its token
    await complete_all(wf, names.handle, 1)
    done = await until_status(wf, running.id, COMPLETED)
    assert "work" in path(done, "terminated") and path(done)[-3:] == ["h_job", "h_end", "h"]
    assert done.variables["reason"] == "asked"


async def test_a_non_interrupting_message_event_subprocess_fires_twice(wf: Stub) -> None:
    names = Names()
    workflow = await deploy(
        wf, main(names, handler(names, on_message(names.message), interrupting=False))
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, workflow, user)
    for _ in range(2):
        assert (await publish(wf, names.message, user)).delivered_count == 1
    await complete_all(wf, names.work, 1)
    assert (await execution(wf, running.id)).status == RUNNING  # it waits for them
    await complete_all(wf, names.handle, 2)
    await until_status(wf, running.id, COMPLETED)


async def test_timer_event_subprocesses_interrupting_and_cycling(
    wf: Stub, clock: ManualClock
) -> None:
    names = Names()
    late = await deploy(wf, main(names, handler(names, on_timer(duration="PT1H"))))
    ticking = await deploy(
        wf, main(names, handler(names, on_timer(cycle="R2/PT10M"), interrupting=False, id="t"))
    )
    stopped = await start_execution(wf, late)
    ticked = await start_execution(wf, ticking)
    for _ in range(2):
        await advance(clock, minutes=10, seconds=1)
        await asyncio.sleep(0.2)
    await advance(clock, minutes=45)
    await until_waiting_at(wf, stopped.id, "h", "h_job")
    await until_waiting_at(wf, ticked.id, "t", "t_job", "work")
    handled = await jobs(wf, names.handle)
    assert len(handled) == 3  # one for the interrupting timer, two ticks
    for item in handled:
        await wf.CompleteJob(pb.CompleteJobRequest(job_key=item.job_key))
    await until_status(wf, stopped.id, COMPLETED)
    await complete_all(wf, names.work, 1)
    await until_status(wf, ticked.id, COMPLETED)


async def test_a_signal_event_subprocess_fires_on_each_broadcast(wf: Stub) -> None:
    names = Names()
    bpmn = main(names, handler(names, on_signal(), interrupting=False), signal=names.signal)
    running = await start_execution(wf, await deploy(wf, bpmn))
    for _ in range(2):
        reply = await wf.BroadcastSignal(pb.BroadcastSignalRequest(signal_name=names.signal))
        assert reply.delivered_count == 1
    await complete_all(wf, names.handle, 2)
    await complete_all(wf, names.work, 1)
    await until_status(wf, running.id, COMPLETED)


async def test_an_error_event_subprocess_catches_throw_error(wf: Stub) -> None:
    names = Names()
    workflow = await deploy(wf, main(names, handler(names, on_error("DECLINED"))))
    running = await start_execution(wf, workflow)
    (work,) = await jobs(wf, names.work)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=work.job_key, error_code="DECLINED"))
    await complete_all(wf, names.handle, 1)
    done = await until_status(wf, running.id, COMPLETED)
    assert not done.incidents and "work" in path(done, "terminated")


async def test_a_boundary_event_catches_before_an_error_event_subprocess(wf: Stub) -> None:
    names = Names()
    bpmn = main(
        names,
        handler(names, on_error()),
        '<bpmn:boundaryEvent id="caught" attachedToRef="work">'
        '<bpmn:errorEventDefinition id="b1"/></bpmn:boundaryEvent>',
        '<bpmn:endEvent id="handled"/>',
        flow("b2", "caught", "handled"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    (work,) = await jobs(wf, names.work)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=work.job_key, error_code="ANY"))
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-2:] == ["caught", "handled"] and "h" not in path(done, "activated")


async def test_an_error_end_event_in_a_sub_process_caught_or_an_incident(wf: Stub) -> None:
    names = Names()
    throwing = in_sub(names, error_end("boom", "E1"), after_work="boom")
    caught = throwing.replace("</bpmn:process>", handler(names, on_error("E1")) + "</bpmn:process>")
    handled = await start_execution(wf, await deploy(wf, caught))
    await complete_all(wf, names.work, 1)
    await complete_all(wf, names.handle, 1)
    done = await until_status(wf, handled.id, COMPLETED)
    assert "sub" in path(done, "terminated")

    uncaught = await start_execution(wf, await deploy(wf, throwing))
    await complete_all(wf, names.work, 1)
    stuck = await until_waiting_at(wf, uncaught.id, "boom", "sub")
    (incident,) = stuck.incidents
    assert incident.element_id == "boom" and "'E1'" in incident.error_message


async def test_event_subprocesses_in_a_sub_process(wf: Stub) -> None:
    names = Names()
    bpmn = in_sub(
        names,
        handler(names, on_message(names.message)),
        handler(names, on_escalation(catch_all=True), interrupting=False, id="e"),
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, await deploy(wf, bpmn), user)
    assert sorted(running.current_node_ids) == ["h_start", "sub", "work"]
    await publish(wf, names.message, user)
    await until_waiting_at(wf, running.id, "sub", "h", "h_job")
    await complete_all(wf, names.handle, 1)
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-2:] == ["sub", "end"]
    # Closed with its scope: nothing waits for the message any more.
    assert (await publish(wf, names.message, user)).delivered_count == 0


async def test_an_escalation_event_subprocess_beside_the_thrower(wf: Stub) -> None:
    names = Names()
    bpmn = in_sub(names, escalation_end("up"), after_work="up").replace(
        "</bpmn:process>",
        handler(names, on_escalation(), interrupting=False) + "</bpmn:process>",
    )
    bpmn = bpmn.replace(
        "<bpmndi:BPMNDiagram",
        '<bpmn:escalation id="Escalation_esp" escalationCode="up"/><bpmndi:BPMNDiagram',
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_all(wf, names.work, 1)
    await until_waiting_at(wf, running.id, "h", "h_job")  # the sub-process ended
    await complete_all(wf, names.handle, 1)
    await until_status(wf, running.id, COMPLETED)


async def test_a_message_racing_the_main_path_to_its_end(wf: Stub) -> None:
    names = Names()
    workflow = await deploy(wf, main(names, handler(names, on_message(names.message))))
    for _ in range(5):
        user = str(uuid.uuid4())
        running = await start_execution(wf, workflow, user)
        (work,) = await jobs(wf, names.work)
        completed, reply = await asyncio.gather(
            wf.CompleteJob(pb.CompleteJobRequest(job_key=work.job_key)),
            publish(wf, names.message, user),
            return_exceptions=True,
        )
        assert isinstance(reply, pb.PublishMessageResponse)
        if isinstance(completed, grpc.aio.AioRpcError):
            assert completed.code() == grpc.StatusCode.NOT_FOUND  # interrupted first
        # Exactly one of them won.
        assert isinstance(completed, BaseException) == bool(reply.delivered_count)
        if reply.delivered_count:
            await complete_all(wf, names.handle, 1)
        done = await until_status(wf, running.id, COMPLETED)
        assert ("h" in path(done)) == bool(reply.delivered_count)


async def test_a_timer_and_a_message_racing_start_one_event_subprocess(
    wf: Stub, clock: ManualClock
) -> None:
    names = Names()
    bpmn = main(
        names,
        handler(names, on_message(names.message)),
        handler(names, on_timer(duration="PT1M"), id="t"),
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, await deploy(wf, bpmn), user)
    clock.advance(timedelta(minutes=2))
    await asyncio.gather(publish(wf, names.message, user), asyncio.sleep(0.05))
    await complete_all(wf, names.handle, 1)
    done = await until_status(wf, running.id, COMPLETED)
    assert len({"h", "t"} & set(path(done))) == 1


async def test_a_waiting_event_subprocess_survives_a_restart(
    wf: Stub, wf_env: dict[str, str], clock: ManualClock
) -> None:
    names = Names()
    workflow = await deploy(
        wf, main(names, handler(names, on_message(names.message), interrupting=False))
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, workflow, user)
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
            assert (await publish(other, names.message, user)).delivered_count == 1
    finally:
        await host.stop()
    await complete_all(wf, names.handle, 1)
    await complete_all(wf, names.work, 1)
    await until_status(wf, running.id, COMPLETED)


async def test_erase_and_delete_workflow_remove_event_subprocess_subscriptions(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    names = Names()
    workflow = await deploy(wf, main(names, handler(names, on_message(names.message))))
    user = str(uuid.uuid4())
    await start_execution(wf, workflow, user)
    await start_execution(wf, workflow)

    async def subscriptions() -> int:
        found: int = await admin.fetchval(
            "SELECT count(*) FROM workflows.message_subscriptions WHERE message_name = $1",
            names.message,
        )
        return found

    assert await subscriptions() == 2
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert await subscriptions() == 1
    await wf.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id=workflow.id, force=True))
    assert await subscriptions() == 0
