"""Message intermediate throw events and message end events (issue 15), as
Camunda Modeler 5 saves them for Zeebe 8: job-based (a job of their
zeebe:taskDefinition, with headers, inputs and outputs, as a service task),
or the built-in `lifecycle.publish_message`, which publishes a message of the
workflows service exactly as PublishMessage does, in the transaction of the
step that completes its element (also from a send task or a service task).
A message one execution throws continues another execution of its user that
waits for it (by user id, or by a correlation key within the user) and starts
the workflows whose message start event waits for it."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any, NamedTuple
from xml.sax.saxutils import escape, quoteattr

import asyncpg
import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import dict_to_struct, struct_to_dict
from services.workflows.store.locks import USER_LOCK
from tests.workflows.bpmn_docs import chain, definitions, end, flow, parallel, start, subprocess
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    incident_of,
    jobs,
    path,
    refused,
    until_waiting_at,
    until_waiting_for_user,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING
FAILED = pb.EXECUTION_STATUS_FAILED
PUBLISH = "lifecycle.publish_message"

# ---------------------------------------------------------------- as the modeler saves them

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"'
    ' xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI"'
    ' xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"'
    ' xmlns:zeebe="http://camunda.org/schema/zeebe/1.0"'
    ' xmlns:di="http://www.omg.org/spec/DD/20100524/DI"'
    ' xmlns:modeler="http://camunda.org/schema/modeler/1.0"'
    ' id="Definitions_0m5g2xq" targetNamespace="http://bpmn.io/schema/bpmn"'
    ' exporter="Camunda Modeler" exporterVersion="5.25.0"'
    ' modeler:executionPlatform="Camunda Cloud" modeler:executionPlatformVersion="8.5.0">\n'
)


class El(NamedTuple):
    """A flow node: its tag, id, name, what goes in its extensionElements, and
    its event definition (written after its incoming and outgoing flows)."""

    tag: str
    id: str
    name: str = ""
    extensions: str = ""
    definition: str = ""
    attributes: str = ""


def zeebe(
    task_type: str | None = None,
    *,
    retries: int | None = None,
    inputs: dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """zeebe: extensions in the order the modeler writes them."""
    parts = []
    if task_type is not None:
        retry = f' retries="{retries}"' if retries is not None else ""
        parts.append(f'<zeebe:taskDefinition type="{task_type}"{retry} />')
    mappings = [
        f"<zeebe:{kind} source={quoteattr(source)} target={quoteattr(target)} />"
        for kind, given in (("input", inputs), ("output", outputs))
        for target, source in (given or {}).items()
    ]
    if mappings:
        parts.append(f"<zeebe:ioMapping>{''.join(mappings)}</zeebe:ioMapping>")
    if headers:
        items = "".join(
            f"<zeebe:header key={quoteattr(k)} value={quoteattr(v)} />" for k, v in headers.items()
        )
        parts.append(f"<zeebe:taskHeaders>{items}</zeebe:taskHeaders>")
    return "".join(parts)


MESSAGE_EVENT = '<bpmn:messageEventDefinition id="MessageEventDefinition_{}" />'


def thrower(tag: str, id: str, extensions: str, name: str = "Tell the others") -> El:
    """A message intermediate throw event or end event (or a send or service task)."""
    definition = MESSAGE_EVENT.format(id) if tag.endswith("Event") else ""
    return El(tag, id, name, extensions, definition)


def message_catch(id: str, message_id: str) -> El:
    definition = f'<bpmn:messageEventDefinition id="Def_{id}" messageRef="{message_id}" />'
    return El("intermediateCatchEvent", id, "Wait for it", definition=definition)


def modeler(
    *elements: El,
    messages: dict[str, tuple[str, str | None]] | None = None,
    start: str = "",
) -> str:
    """A process running `elements` in a row from a start event (with the
    event definition `start`) to an end event unless the last one is an end
    event, its messages (id: name, correlationKey), and its diagram."""
    nodes = [El("startEvent", "StartEvent_1", "Started", definition=start), *elements]
    if nodes[-1].tag != "endEvent":
        nodes.append(El("endEvent", "Event_end", "Done"))
    flows = [(f"Flow_{n}", a.id, b.id) for n, (a, b) in enumerate(itertools.pairwise(nodes))]
    body = []
    for node in nodes:
        inner = f"<bpmn:extensionElements>{node.extensions}</bpmn:extensionElements>"
        inner = inner if node.extensions else ""
        inner += "".join(f"<bpmn:incoming>{f}</bpmn:incoming>" for f, _, b in flows if b == node.id)
        inner += "".join(f"<bpmn:outgoing>{f}</bpmn:outgoing>" for f, a, _ in flows if a == node.id)
        body.append(
            f'<bpmn:{node.tag} id="{node.id}" name={quoteattr(node.name)}{node.attributes}>'
            f"{inner}{node.definition}</bpmn:{node.tag}>"
        )
    body += [f'<bpmn:sequenceFlow id="{f}" sourceRef="{a}" targetRef="{b}" />' for f, a, b in flows]
    declared = ""
    for message_id, (name, key) in (messages or {}).items():
        subscription = (
            "<bpmn:extensionElements>"
            f"<zeebe:subscription correlationKey={quoteattr(key)} /></bpmn:extensionElements>"
            if key
            else ""
        )
        declared += (
            f'<bpmn:message id="{message_id}" name="{escape(name)}">{subscription}</bpmn:message>'
        )
    shapes = "".join(
        f'<bpmndi:BPMNShape id="{n.id}_di" bpmnElement="{n.id}">'
        f'<dc:Bounds x="{150 * i + 100}" y="100" width="100" height="80" /></bpmndi:BPMNShape>'
        for i, n in enumerate(nodes)
    )
    edges = "".join(
        f'<bpmndi:BPMNEdge id="{f}_di" bpmnElement="{f}">'
        f'<di:waypoint x="{150 * i + 200}" y="140" />'
        f'<di:waypoint x="{150 * i + 250}" y="140" /></bpmndi:BPMNEdge>'
        for i, (f, _, _) in enumerate(flows)
    )
    process_id = f"Process_{uuid.uuid4().hex[:7]}"
    return (
        f'{HEAD}<bpmn:process id="{process_id}" isExecutable="true">'
        f"{''.join(body)}</bpmn:process>{declared}"
        '<bpmndi:BPMNDiagram id="BPMNDiagram_1"><bpmndi:BPMNPlane id="BPMNPlane_1"'
        f' bpmnElement="{process_id}">'
        f"{shapes}{edges}</bpmndi:BPMNPlane></bpmndi:BPMNDiagram></bpmn:definitions>\n"
    )


def fresh(name: str) -> str:
    """A message name no other test publishes (message start events listen session-wide)."""
    return f"{name}.{uuid.uuid4().hex[:8]}"


def receiver(name: str, key: str | None = None) -> str:
    """A workflow that waits for the message `name` at a catch event."""
    return modeler(message_catch("Event_wait", "Message_in"), messages={"Message_in": (name, key)})


async def start_parallel(wf: Stub, workflow: pb.Workflow, user: str, **variables: Any) -> str:
    """Another execution of the workflow for the user, beside those running."""
    reply = await wf.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=workflow.id,
            user_id=user,
            variables=dict_to_struct(variables),
            conflict_policy=pb.CONFLICT_POLICY_ALLOW_PARALLEL,
        )
    )
    return reply.execution.id


# ---------------------------------------------------------------- job-based, as in Zeebe


async def test_a_message_throw_event_is_a_job_with_its_headers_inputs_and_outputs(
    wf: Stub,
) -> None:
    extensions = zeebe(
        "notify-partner",
        retries=2,
        inputs={"reference": '=orderId + "-paid"'},
        outputs={"partner_ack": "=ack"},
        headers={"channel": "webhook"},
    )
    workflow = await deploy(
        wf, modeler(thrower("intermediateThrowEvent", "Event_0q8x1vb", extensions))
    )
    running = await start_execution(wf, workflow, orderId="o-1")
    assert running.status == RUNNING
    assert list(running.current_node_ids) == ["Event_0q8x1vb"]

    (job,) = [j for j in await jobs(wf, "notify-partner") if j.execution_id == running.id]
    assert (job.element_id, job.retries) == ("Event_0q8x1vb", 2)
    assert dict(job.custom_headers) == {"channel": "webhook"}
    assert struct_to_dict(job.variables) == {"orderId": "o-1", "reference": "o-1-paid"}
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"ack": "ok"}))
    )
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done) == ["StartEvent_1", "Event_0q8x1vb", "Event_end"]
    # The input stays local; the output mapping sets what the process gets.
    assert struct_to_dict(done.variables) == {"orderId": "o-1", "ack": "ok", "partner_ack": "ok"}


async def test_a_message_end_event_is_a_job_whose_failure_is_an_incident(wf: Stub) -> None:
    end = thrower("endEvent", "Event_1n2bq0z", zeebe("close-order", retries=1), "Order closed")
    workflow = await deploy(wf, modeler(end))
    running = await start_execution(wf, workflow)
    await until_waiting_at(wf, running.id, "Event_1n2bq0z")

    (job,) = [j for j in await jobs(wf, "close-order") if j.execution_id == running.id]
    await wf.FailJob(pb.FailJobRequest(job_key=job.job_key, retries=0, error_message="down"))
    incident = await incident_of(wf, running.id)
    assert incident.element_id == "Event_1n2bq0z" and "down" in incident.error_message
    assert (await execution(wf, running.id)).status == RUNNING

    await wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=incident.id))
    (again,) = [j for j in await jobs(wf, "close-order") if j.execution_id == running.id]
    await wf.CompleteJob(pb.CompleteJobRequest(job_key=again.job_key))
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done) == ["StartEvent_1", "Event_1n2bq0z"]


async def test_message_end_events_in_a_sub_process_end_it_when_both_are_done(wf: Stub) -> None:
    name = fresh("branch.done")
    receiving = await start_execution(
        wf, await deploy(wf, receiver(name)), user := str(uuid.uuid4())
    )
    ends = [
        ("told", zeebe(PUBLISH, headers={"messageName": name})),
        ("closed", zeebe("close-branch")),
    ]
    inner = [
        start("in"),
        parallel("fork"),
        *(
            f'<bpmn:endEvent id="{id}"><bpmn:extensionElements>{extensions}'
            f"</bpmn:extensionElements>{MESSAGE_EVENT.format(id)}</bpmn:endEvent>"
            for id, extensions in ends
        ),
        *chain("in", "fork", "told", prefix="i"),
        flow("i3", "fork", "closed"),
    ]
    bpmn = definitions(start(), subprocess("sub", *inner), end(), *chain("start", "sub", "end"))
    running = await start_execution(wf, await deploy(wf, bpmn), user)
    # The published branch ended at once; the sub-process waits for the other.
    assert list(running.current_node_ids) == ["closed", "sub"]
    assert (await execution(wf, receiving.id)).status == COMPLETED

    (job,) = [j for j in await jobs(wf, "close-branch") if j.execution_id == running.id]
    await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert path(done)[-3:] == ["closed", "sub", "end"]


# ---------------------------------------------------------------- lifecycle.publish_message


async def test_a_published_message_continues_a_waiting_execution_and_starts_a_workflow(
    wf: Stub,
) -> None:
    name = fresh("order.paid")
    waiting = await deploy(wf, receiver(name))
    by_message = '<bpmn:messageEventDefinition id="Def_start" messageRef="Message_start" />'
    started = await deploy(wf, modeler(start=by_message, messages={"Message_start": (name, None)}))
    publish = zeebe(
        PUBLISH,
        inputs={"variables": '={"amount": amount}'},
        headers={"messageName": name},
    )
    checkout = await deploy(wf, modeler(thrower("intermediateThrowEvent", "Event_paid", publish)))
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    receiving = await start_execution(wf, waiting, user, step="before")
    elsewhere = await start_execution(wf, waiting, other)

    thrown = await start_execution(wf, checkout, user, amount=30)
    assert thrown.status == COMPLETED
    assert path(thrown) == ["StartEvent_1", "Event_paid", "Event_end"]
    # Published in the thrower's step: the receiver moved on in the same commit.
    received = await execution(wf, receiving.id)
    assert received.status == COMPLETED
    assert struct_to_dict(received.variables) == {"step": "before", "amount": 30}
    assert (await execution(wf, elsewhere.id)).status == RUNNING
    found = await wf.ListExecutions(pb.ListExecutionsRequest(workflow_id=started.id))
    (new,) = found.executions
    assert (new.user_id, new.status) == (user, COMPLETED)
    assert struct_to_dict(new.variables) == {"amount": 30}


async def test_a_message_end_event_publishes_on_its_correlation_key_within_the_user(
    wf: Stub,
) -> None:
    name = fresh("invoice.settled")
    waiting = await deploy(wf, receiver(name, key="=orderId"))
    publish = zeebe(
        PUBLISH,
        inputs={"messageName": f'="{name}"', "correlationKey": "=orderId"},
        headers={"variables": '={"settled": true}'},
    )
    settle = await deploy(wf, modeler(thrower("endEvent", "Event_settled", publish)))
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    this_order = await start_execution(wf, waiting, user, orderId="o-1")
    next_order = await start_parallel(wf, waiting, user, orderId="o-2")
    other_user = await start_execution(wf, waiting, other, orderId="o-1")

    thrown = await start_execution(wf, settle, user, orderId="o-1")
    assert thrown.status == COMPLETED
    assert path(thrown) == ["StartEvent_1", "Event_settled"]
    received = await execution(wf, this_order.id)
    assert received.status == COMPLETED
    assert struct_to_dict(received.variables) == {"orderId": "o-1", "settled": True}
    for still in (next_order, other_user.id):
        assert list((await execution(wf, still)).current_node_ids) == ["Event_wait"]


@pytest.mark.parametrize("tag", ["sendTask", "serviceTask"])
async def test_a_task_publishes_a_message_kept_for_its_time_to_live(
    wf: Stub, clock: ManualClock, tag: str
) -> None:
    name = fresh("welcome.sent")
    publish = zeebe(PUBLISH, headers={"messageName": name, "timeToLive": "PT1H"})
    send = await deploy(wf, modeler(thrower(tag, "Activity_send", publish, "Send welcome")))
    waiting = await deploy(wf, receiver(name))
    user = str(uuid.uuid4())

    assert (await start_execution(wf, send, user)).status == COMPLETED
    # No one waited: buffered, and each execution that waits within the hour gets it.
    assert (await start_execution(wf, waiting, user)).status == COMPLETED
    assert (await execution(wf, await start_parallel(wf, waiting, user))).status == COMPLETED
    await advance(clock, minutes=61)
    late = await start_parallel(wf, waiting, user)
    assert list((await execution(wf, late)).current_node_ids) == ["Event_wait"]


async def test_without_a_time_to_live_a_message_no_one_waits_for_is_not_kept(wf: Stub) -> None:
    name = fresh("nobody.listens")
    publish = zeebe(PUBLISH, headers={"messageName": name})
    send = await deploy(wf, modeler(thrower("intermediateThrowEvent", "Event_tell", publish)))
    user = str(uuid.uuid4())
    assert (await start_execution(wf, send, user)).status == COMPLETED
    later = await start_execution(wf, await deploy(wf, receiver(name)), user)
    assert list(later.current_node_ids) == ["Event_wait"]


async def test_a_dynamic_message_name_that_is_not_a_string_is_an_incident_naming_it(
    wf: Stub,
) -> None:
    name = fresh("order.shipped")
    waiting = await deploy(wf, receiver(name))
    publish = zeebe(PUBLISH, inputs={"messageName": "=orderNumber"})
    ship = await deploy(wf, modeler(thrower("intermediateThrowEvent", "Event_ship", publish)))
    user = str(uuid.uuid4())
    receiving = await start_execution(wf, waiting, user)

    failed = await start_execution(wf, ship, user, orderNumber=42)
    incident = await incident_of(wf, failed.id)
    assert incident.element_id == "Event_ship"
    assert "parameter 'messageName' must be a non-empty string" in incident.error_message
    assert "(got 42)" in incident.error_message
    assert (await execution(wf, failed.id)).status == RUNNING
    assert (await execution(wf, receiving.id)).status == RUNNING


async def test_message_variables_too_large_for_the_receiver_fail_the_receiver_only(
    wf: Stub,
) -> None:
    name = fresh("big.message")
    waiting = await deploy(wf, receiver(name))
    publish = zeebe(PUBLISH, headers={"messageName": name, "variables": '={"blob": blob}'})
    send = await deploy(wf, modeler(thrower("intermediateThrowEvent", "Event_tell", publish)))
    user = str(uuid.uuid4())
    receiving = await start_execution(wf, waiting, user, mine="x" * 40_000)

    thrown = await start_execution(wf, send, user, blob="y" * 40_000)
    assert thrown.status == COMPLETED
    failed = await execution(wf, receiving.id)
    assert failed.status == FAILED
    assert "the variables of the message of 'Event_wait'" in failed.error_message


async def test_executions_throwing_at_once_each_publish_their_message_once(wf: Stub) -> None:
    """Two steps of one user that publish at the same time: each takes the
    user's lock alone in turn (PostgreSQL breaks their deadlock, the step it
    chose is retried), and the receiver gets both, one after the other."""
    name = fresh("ping")
    two = modeler(
        message_catch("Event_first", "Message_in"),
        message_catch("Event_second", "Message_in"),
        messages={"Message_in": (name, None)},
    )
    publish = zeebe(PUBLISH, headers={"messageName": name})
    prepared = modeler(
        El("serviceTask", "Activity_prepare", "Prepare", zeebe("prepare-ping")),
        thrower("intermediateThrowEvent", "Event_ping", publish),
    )
    sender = await deploy(wf, prepared)
    user = str(uuid.uuid4())
    receiving = await start_execution(wf, await deploy(wf, two), user)
    senders = [await start_parallel(wf, sender, user) for _ in range(2)]
    found = [j for j in await jobs(wf, "prepare-ping") if j.execution_id in senders]
    assert len(found) == 2

    await asyncio.gather(
        *(wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key)) for job in found)
    )
    for sent in senders:
        assert (await execution(wf, sent)).status == COMPLETED
    received = await execution(wf, receiving.id)
    assert received.status == COMPLETED
    assert path(received) == ["StartEvent_1", "Event_first", "Event_second", "Event_end"]


async def test_a_step_publishes_once_the_users_work_in_flight_has_committed(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    """As PublishMessage, the step takes its user's lock alone to publish: a
    step of the user in flight (holding it shared) commits first, so that
    each sees what the other wrote (a subscription, a buffered message)."""
    name = fresh("after.you")
    publish = zeebe(PUBLISH, headers={"messageName": name})
    prepared = modeler(
        El("serviceTask", "Activity_prepare", "Prepare", zeebe("prepare-after")),
        thrower("intermediateThrowEvent", "Event_tell", publish),
    )
    user = str(uuid.uuid4())
    receiving = await start_execution(wf, await deploy(wf, receiver(name)), user)
    sending = await start_execution(wf, await deploy(wf, prepared), user)
    (job,) = [j for j in await jobs(wf, "prepare-after") if j.execution_id == sending.id]

    async with admin.transaction():
        await admin.execute(
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))", USER_LOCK, user
        )
        completing = asyncio.ensure_future(
            wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
        )
        await until_waiting_for_user(admin, user)
        assert (await execution(wf, receiving.id)).status == RUNNING
    await completing
    assert (await execution(wf, sending.id)).status == COMPLETED
    assert (await execution(wf, receiving.id)).status == COMPLETED


# ---------------------------------------------------------------- refused at save


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (
            thrower("intermediateThrowEvent", "Event_1", ""),
            "'Event_1': a message intermediate throw event needs a type (zeebe:taskDefinition)",
        ),
        (
            thrower("endEvent", "Event_2", zeebe(headers={"channel": "email"})),
            "'Event_2': a message end event needs a type (zeebe:taskDefinition)",
        ),
        (
            thrower("intermediateThrowEvent", "Event_3", zeebe(PUBLISH)),
            "'Event_3': header 'messageName' (or an input 'messageName') is required",
        ),
        (
            thrower("sendTask", "Activity_4", zeebe(PUBLISH, inputs={"messageName": "=42"})),
            "'Activity_4': input 'messageName' must be a non-empty string",
        ),
        (
            thrower(
                "endEvent",
                "Event_5",
                zeebe(PUBLISH, headers={"messageName": "m", "timeToLive": "soon"}),
            ),
            "'Event_5': header 'timeToLive' must be an ISO-8601 duration",
        ),
        (
            thrower(
                "intermediateThrowEvent",
                "Event_6",
                zeebe(PUBLISH, headers={"messageName": "m"}, inputs={"timeToLive": '="P400D"'}),
            ),
            "'Event_6': input 'timeToLive' must be an ISO-8601 duration in weeks, days, hours,"
            " minutes or seconds, at most P365D (got 'P400D')",
        ),
        (
            thrower(
                "intermediateThrowEvent",
                "Event_7",
                zeebe(PUBLISH, headers={"messageName": "m"}, inputs={"variables": "=[1]"}),
            ),
            "'Event_7': input 'variables' must give a map",
        ),
    ],
)
async def test_a_message_thrower_without_what_it_needs_is_refused_naming_it(
    wf: Stub, element: El, expected: str
) -> None:
    assert expected in await refused(wf, modeler(element))
