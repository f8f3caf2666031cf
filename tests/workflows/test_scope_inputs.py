"""Input mappings on sub-processes, receive tasks and call activities (issue
15), as Zeebe gives them: a sub-process's inputs are local variables that
every element inside it sees and that never reach the process; a receive
task's are seen by its correlation key; a call activity's go to the called
execution, alone when propagateAllParentVariables is false."""

from __future__ import annotations

import uuid

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import struct_to_dict
from tests.workflows.bpmn_docs import (
    catch,
    chain,
    definitions,
    end,
    flow,
    receive,
    service,
    start,
    subprocess,
    with_inputs,
    xor,
)
from tests.workflows.bpmn_esp_docs import esp, on_message
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    incident_of,
    jobs,
    path,
    refused,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED


def kind() -> str:
    return f"inputs-{uuid.uuid4().hex[:8]}"


async def complete(wf: Stub, job: pb.ActivatedJob) -> None:
    await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))


def discounted(task_type: str, source: str = "=price / 10") -> str:
    """A sub-process with the input `discount`; inside, a gateway reads it and a job sees it."""
    inner = subprocess(
        "order",
        start("inner_start"),
        xor("big"),
        service("apply", task_type),
        end("inner_end"),
        flow("i1", "inner_start", "big"),
        flow("i2", "big", "apply", "=discount > 5"),
        flow("i3", "big", "inner_end", "=discount <= 5"),
        flow("i4", "apply", "inner_end"),
    )
    return definitions(
        start(), with_inputs(inner, discount=source), end(), *chain("start", "order", "end")
    )


async def test_a_sub_process_input_is_seen_inside_and_never_reaches_the_process(
    wf: Stub,
) -> None:
    task_type = kind()
    workflow = await deploy(wf, discounted(task_type))
    started = await start_execution(wf, workflow, price=80)
    (job,) = await jobs(wf, task_type)
    assert struct_to_dict(job.variables) == {"price": 80, "discount": 8}
    await complete(wf, job)
    done = await until_status(wf, started.id, COMPLETED)
    assert struct_to_dict(done.variables) == {"price": 80}
    small = await start_execution(wf, workflow, price=20)
    assert small.status == COMPLETED and "apply" not in path(small)


async def test_a_failing_sub_process_input_is_an_incident_naming_it(wf: Stub) -> None:
    workflow = await deploy(wf, discounted(kind(), source="=price.missing"))
    started = await start_execution(wf, workflow, price=80)
    incident = await incident_of(wf, started.id)
    assert incident.element_id == "order"
    assert "input 'discount' of 'order'" in incident.error_message


async def test_a_receive_task_correlates_on_its_input(wf: Stub) -> None:
    waiting = with_inputs(receive("paid", "payment"), orderKey='="order-" + string(order)')
    bpmn = definitions(start(), waiting, end(), *chain("start", "paid", "end")).replace(
        '<bpmn:message id="Msg_payment" name="payment"/>',
        '<bpmn:message id="Msg_payment" name="payment"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderKey"/></bpmn:extensionElements>'
        "</bpmn:message>",
    )
    user = str(uuid.uuid4())
    started = await start_execution(wf, await deploy(wf, bpmn), user, order=7)

    async def send(key: str) -> int:
        request = pb.PublishMessageRequest(name="payment", correlation_key=key, user_id=user)
        return (await wf.PublishMessage(request)).delivered_count

    assert await send("order-8") == 0
    assert await send("order-7") == 1
    done = await until_status(wf, started.id, COMPLETED)
    assert "orderKey" not in struct_to_dict(done.variables)


async def test_a_catch_event_reads_its_inputs_in_its_key_its_timer_and_its_outputs(
    wf: Stub, clock: ManualClock
) -> None:
    paid = with_inputs(catch("paid", message="payment"), orderKey='="order-" + string(order)')
    paid = paid.replace(
        "</zeebe:ioMapping>",
        '<zeebe:output source="=orderKey" target="paidFor"/></zeebe:ioMapping>',
    )
    later = with_inputs(
        '<bpmn:intermediateCatchEvent id="later"><bpmn:timerEventDefinition>'
        "<bpmn:timeDuration>=wait</bpmn:timeDuration></bpmn:timerEventDefinition>"
        "</bpmn:intermediateCatchEvent>",
        wait='="PT" + string(minutes) + "M"',
    )
    bpmn = definitions(start(), paid, later, end(), *chain("start", "paid", "later", "end"))
    bpmn = bpmn.replace(
        '<bpmn:message id="Msg_payment" name="payment"/>',
        '<bpmn:message id="Msg_payment" name="payment"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderKey"/></bpmn:extensionElements>'
        "</bpmn:message>",
    )
    user = str(uuid.uuid4())
    started = await start_execution(wf, await deploy(wf, bpmn), user, order=7, minutes=30)
    request = pb.PublishMessageRequest(name="payment", correlation_key="order-7", user_id=user)
    assert (await wf.PublishMessage(request)).delivered_count == 1
    await until_waiting_at(wf, started.id, "later")
    await advance(clock, minutes=29)
    assert list((await execution(wf, started.id)).current_node_ids) == ["later"]
    await advance(clock, minutes=2)
    done = await until_status(wf, started.id, COMPLETED)
    assert struct_to_dict(done.variables) == {"order": 7, "minutes": 30, "paidFor": "order-7"}


async def test_input_mappings_after_an_event_based_gateway_are_refused(wf: Stub) -> None:
    bpmn = definitions(
        start(),
        '<bpmn:eventBasedGateway id="which"/>',
        with_inputs(catch("paid", message="payment"), x="=1"),
        catch("late", duration="PT1H"),
        end(),
        end("gave_up"),
        *chain("start", "which", "paid", "end"),
        flow("to_late", "which", "late"),
        flow("from_late", "late", "gave_up"),
    )
    assert (
        "element 'paid': an event after an event-based gateway takes no input mappings"
        in await refused(wf, bpmn)
    )


def calling(child_id: str, propagate: str) -> str:
    flag = f' propagateAllParentVariables="{propagate}"' if propagate else ""
    activity = (
        '<bpmn:callActivity id="call"><bpmn:extensionElements>'
        f'<zeebe:calledElement processId="{child_id}"{flag}/>'
        '<zeebe:ioMapping><zeebe:input source="=amount * 2" target="doubled"/></zeebe:ioMapping>'
        "</bpmn:extensionElements></bpmn:callActivity>"
    )
    return definitions(start(), activity, end(), *chain("start", "call", "end"))


async def test_a_call_activity_passes_its_inputs_and_the_parents_variables_unless_told_not_to(
    wf: Stub,
) -> None:
    task_type = kind()
    child = await deploy(
        wf, definitions(start(), service("work", task_type), end(), *chain("start", "work", "end"))
    )
    for propagate, expected in (
        ("", {"amount": 21, "secret": "s", "doubled": 42}),
        ("false", {"doubled": 42}),
    ):
        parent = await deploy(wf, calling(child.id, propagate))
        started = await start_execution(wf, parent, amount=21, secret="s")
        (job,) = await jobs(wf, task_type)
        assert struct_to_dict(job.variables) == expected, propagate
        await complete(wf, job)
        await until_status(wf, started.id, COMPLETED)
    assert (await execution(wf, started.id)).status == COMPLETED


async def test_input_mappings_on_an_event_sub_process_are_refused(wf: Stub) -> None:
    inner = esp("late", on_message("late"), end("late_end"), flow("l1", "late_start", "late_end"))
    bpmn = definitions(start(), end(), *chain("start", "end"), with_inputs(inner, x="=1"))
    assert "element 'late': an event sub-process cannot have input mappings" in await refused(
        wf, bpmn
    )
