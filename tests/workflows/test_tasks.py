"""Tasks as Camunda Modeler 5 saves them (issue 15, first slice): undefined
and manual tasks and none throw events pass through; send and business rule
tasks are jobs like service tasks; script tasks evaluate a CEL expression
into their result variable; input mappings are the element's local variables
(seen by its job, its built-in task and its outputs, never by the process);
a collaboration runs its one executable process. Each document is saved
through the service (with its diagram and zeebe: extensions) and run."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

import pytest

from lifecycle.common.v1 import stage_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import dict_to_struct, struct_to_dict
from tests.workflows.bpmn_docs import HEAD, boundary, definitions, end, flow, linear, start
from tests.workflows.conftest import (
    Stub,
    deploy,
    execution,
    incident_of,
    jobs,
    new_user,
    path,
    refused,
    until_status,
)
from tests.workflows.conftest import start as start_execution

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING


def io(inputs: dict[str, str] = {}, outputs: dict[str, str] = {}) -> str:  # noqa: B006
    items = "".join(
        f"<zeebe:input source={quoteattr(s)} target={quoteattr(t)}/>" for t, s in inputs.items()
    ) + "".join(
        f"<zeebe:output source={quoteattr(s)} target={quoteattr(t)}/>" for t, s in outputs.items()
    )
    return f"<zeebe:ioMapping>{items}</zeebe:ioMapping>" if items else ""


def element(
    kind: str,
    id: str,
    *,
    job: str | None = None,
    script: tuple[str, str] | None = None,
    headers: dict[str, str] = {},  # noqa: B006
    extra: str = "",
    **mappings: dict[str, str],
) -> str:
    """A task of `kind` as the modeler writes it: a name, extensions, incoming and outgoing."""
    parts = [f'<zeebe:taskDefinition type="{job}" retries="2"/>' if job else ""]
    if script:
        parts.append(
            f"<zeebe:script expression={quoteattr(script[0])}"
            f" resultVariable={quoteattr(script[1])}/>"
        )
    if headers:
        items = "".join(
            f"<zeebe:header key={quoteattr(k)} value={quoteattr(v)}/>" for k, v in headers.items()
        )
        parts.append(f"<zeebe:taskHeaders>{items}</zeebe:taskHeaders>")
    parts.append(io(**mappings))
    parts.append(extra)
    inner = "".join(parts)
    extensions = f"<bpmn:extensionElements>{inner}</bpmn:extensionElements>" if inner else ""
    return f'<bpmn:{kind} id="{id}" name="{id.title()}">{extensions}</bpmn:{kind}>'


# ---------------------------------------------------------------- 1. pass through


async def test_undefined_and_manual_tasks_and_a_none_throw_event_pass_through(wf: Stub) -> None:
    bpmn = linear(
        start(),
        element("task", "review"),
        element("manualTask", "call_customer"),
        '<bpmn:intermediateThrowEvent id="milestone" name="Reviewed"/>',
        end(),
    )
    done = await start_execution(wf, await deploy(wf, bpmn), n=1)
    assert done.status == COMPLETED
    assert path(done) == ["start", "review", "call_customer", "milestone", "end"]
    assert struct_to_dict(done.variables) == {"n": 1}


async def test_a_passing_task_applies_its_mappings_and_its_inputs_stay_local(wf: Stub) -> None:
    task = element("task", "double", inputs={"factor": "=2"}, outputs={"doubled": "=n * factor"})
    done = await start_execution(wf, await deploy(wf, linear(start(), task, end())), n=21)
    assert done.status == COMPLETED
    assert struct_to_dict(done.variables) == {"n": 21, "doubled": 42}


# ---------------------------------------------------------------- 2. send and business rule tasks


@pytest.mark.parametrize("kind", ["sendTask", "businessRuleTask", "scriptTask"])
async def test_job_based_tasks_are_jobs_like_service_tasks(wf: Stub, kind: str) -> None:
    job_type = f"{kind}-worker"
    bpmn = definitions(
        start(),
        element(kind, "work", job=job_type, headers={"channel": "email"}),
        boundary("failed", "work", error="BOUNCED"),
        end(),
        end("bounced"),
        flow("f1", "start", "work"),
        flow("f2", "work", "end"),
        flow("f3", "failed", "bounced"),
    )
    workflow = await deploy(wf, bpmn)
    first = await start_execution(wf, workflow, to="a@example.com")
    (job,) = await jobs(wf, job_type)
    assert job.element_id == "work" and job.retries == 2
    assert dict(job.custom_headers) == {"channel": "email"}
    assert struct_to_dict(job.variables) == {"to": "a@example.com"}
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct({"sent": True}))
    )
    done = await execution(wf, first.id)
    assert done.status == COMPLETED and path(done) == ["start", "work", "end"]
    assert struct_to_dict(done.variables) == {"to": "a@example.com", "sent": True}

    second = await start_execution(wf, workflow, to="b@example.com")
    (job,) = await jobs(wf, job_type)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=job.job_key, error_code="BOUNCED"))
    caught = await execution(wf, second.id)
    assert caught.status == COMPLETED and path(caught)[-2:] == ["failed", "bounced"]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            element("sendTask", "notify"),
            "'notify': a send task needs a type (zeebe:taskDefinition)",
        ),
        (
            element("businessRuleTask", "rate"),
            "'rate': a business rule task needs a type (zeebe:taskDefinition)",
        ),
        (
            element(
                "businessRuleTask",
                "rate",
                extra='<zeebe:calledDecision decisionId="risk" resultVariable="risk"/>',
            ),
            "'rate': businessRuleTask with zeebe:calledDecision (a DMN decision) is not supported",
        ),
        (
            element("scriptTask", "calc"),
            "'calc': scriptTask is not supported without zeebe:script",
        ),
        (
            element("scriptTask", "calc", job="x", script=("=1", "one")),
            "'calc': a script task takes zeebe:script or zeebe:taskDefinition, not both",
        ),
        (
            element("scriptTask", "calc", script=("=1", "vars")),
            "'calc': zeebe:script resultVariable 'vars' is not a usable variable name",
        ),
        (
            element("scriptTask", "calc", script=("=1 +", "x")),
            "'calc': expression is not valid CEL",
        ),
        (
            # Over the cost checked at save time: comprehensions nested 4 deep.
            element(
                "scriptTask",
                "calc",
                script=("=l.map(a, l.map(b, l.map(c, l.map(d, d))))", "x"),
            ),
            "'calc': expression",
        ),
        ('<bpmn:complexGateway id="approve"/>', "'approve': complexGateway is not supported"),
        (
            element("exclusiveGateway", "sub", inputs={"x": "=1"}),
            "'sub': input mappings on an exclusiveGateway are not supported",
        ),
    ],
)
async def test_a_task_without_what_it_needs_is_refused_naming_it(
    wf: Stub, task: str, expected: str
) -> None:
    assert expected in await refused(wf, linear(start(), task, end()))


# ---------------------------------------------------------------- 3. script tasks


async def test_a_script_task_sets_its_result_variable(wf: Stub) -> None:
    bpmn = linear(
        start(),
        element("scriptTask", "total", script=("=price * quantity", "amount")),
        element(
            "scriptTask",
            "label",
            script=('=amount > 100 ? "big" : "small"', "size"),
            outputs={"label": '=size + " order"'},
        ),
        end(),
    )
    done = await start_execution(wf, await deploy(wf, bpmn), price=30, quantity=4)
    assert done.status == COMPLETED and path(done) == ["start", "total", "label", "end"]
    # With an output mapping the result is local: only the mapping reaches the process.
    assert struct_to_dict(done.variables) == {
        "price": 30,
        "quantity": 4,
        "amount": 120,
        "label": "big order",
    }


async def test_a_failing_or_too_costly_script_is_an_incident_on_its_task(wf: Stub) -> None:
    bpmn = linear(start(), element("scriptTask", "calc", script=("=a / b", "ratio")), end())
    workflow = await deploy(wf, bpmn)
    failing = await start_execution(wf, workflow, a=1, b=0)
    assert failing.status == RUNNING and list(failing.current_node_ids) == ["calc"]
    incident = await incident_of(wf, failing.id)
    assert incident.element_id == "calc"
    assert incident.error_message.startswith("the script of 'calc': 'a / b' failed")

    costly = linear(
        start(),
        element("scriptTask", "calc", script=("=items.map(a, items.map(b, a + b))", "sums")),
        end(),
    )
    big = await start_execution(wf, await deploy(wf, costly), items=list(range(1000)))
    incident = await incident_of(wf, big.id)
    assert "was not evaluated: it would take about" in incident.error_message


# ---------------------------------------------------------------- 4. input mappings

# The regression of the issue: a Camunda Modeler 5 document whose built-in task
# sets the stage only through an input mapping, with no header.
MODELER_SET_STAGE = f"""{HEAD}  <bpmn:process id="Process_0x7k2" isExecutable="true">
    <bpmn:startEvent id="StartEvent_1">
      <bpmn:outgoing>Flow_1</bpmn:outgoing>
    </bpmn:startEvent>
    <bpmn:serviceTask id="Activity_move" name="Move to Activation">
      <bpmn:extensionElements>
        <zeebe:taskDefinition type="lifecycle.set_stage" />
        <zeebe:ioMapping>
          <zeebe:input source="=&quot;Activation&quot;" target="stage" />
        </zeebe:ioMapping>
      </bpmn:extensionElements>
      <bpmn:incoming>Flow_1</bpmn:incoming>
      <bpmn:outgoing>Flow_2</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:endEvent id="Event_end">
      <bpmn:incoming>Flow_2</bpmn:incoming>
    </bpmn:endEvent>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="StartEvent_1" targetRef="Activity_move" />
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Activity_move" targetRef="Event_end" />
  </bpmn:process>
  <bpmndi:BPMNDiagram id="BPMNDiagram_1">
    <bpmndi:BPMNPlane id="BPMNPlane_1" bpmnElement="Process_0x7k2">
      <bpmndi:BPMNShape id="_BPMNShape_StartEvent_2" bpmnElement="StartEvent_1">
        <dc:Bounds x="179" y="99" width="36" height="36" />
      </bpmndi:BPMNShape>
    </bpmndi:BPMNPlane>
  </bpmndi:BPMNDiagram>
</bpmn:definitions>
"""


async def stage_of(wf_users: Any, user: str) -> int:
    reply = await wf_users.GetUser(users_pb2.GetUserRequest(user_id=user))
    return int(reply.user.lifecycle_stage)


async def test_the_builtin_set_stage_takes_its_stage_from_an_input_mapping(
    wf: Stub, wf_users: Any
) -> None:
    workflow = await deploy(wf, MODELER_SET_STAGE)
    user = await new_user(wf_users)
    running = await start_execution(wf, workflow, user)
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done) == ["StartEvent_1", "Activity_move", "Event_end"]
    assert await stage_of(wf_users, user) == stage_pb2.LIFECYCLE_STAGE_ACTIVATION
    assert struct_to_dict(done.variables) == {}  # the input stayed local


async def test_builtin_parameters_from_inputs_win_and_are_checked_when_they_run(
    wf: Stub, wf_users: Any
) -> None:
    bpmn = linear(
        start(),
        element(
            "serviceTask",
            "move",
            job="lifecycle.set_stage",
            headers={"stage": "Acquisition"},
            inputs={"stage": "=target"},
        ),
        element(
            "serviceTask",
            "mark",
            job="lifecycle.update_attributes",
            inputs={"attributes": '={"plan": plan, "moved": true}'},
        ),
        element(
            "serviceTask",
            "note",
            job="lifecycle.emit_event",
            inputs={"event": '="moved"', "data": '={"to": target}'},
        ),
        end(),
    )
    workflow = await deploy(wf, bpmn)
    user = await new_user(wf_users)
    running = await start_execution(wf, workflow, user, target="Revenue", plan="pro")
    done = await until_status(wf, running.id, COMPLETED)
    assert await stage_of(wf_users, user) == stage_pb2.LIFECYCLE_STAGE_REVENUE
    profile = (await wf_users.GetUser(users_pb2.GetUserRequest(user_id=user))).user
    assert struct_to_dict(profile.attributes) == {"plan": "pro", "moved": True}
    assert struct_to_dict(done.variables) == {"target": "Revenue", "plan": "pro"}

    bad = await start_execution(wf, workflow, await new_user(wf_users), target="Nowhere", plan="")
    incident = await incident_of(wf, bad.id)
    assert incident.element_id == "move"
    assert incident.error_message.startswith("parameter 'stage' must be one of Acquisition")
    assert "(got 'Nowhere')" in incident.error_message


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            element("serviceTask", "s", job="lifecycle.set_stage", inputs={"stage": '="Nowhere"'}),
            "'s': input 'stage' gives 'Nowhere': must be one of Acquisition",
        ),
        (
            element("serviceTask", "s", job="lifecycle.set_stage"),
            "'s': header 'stage' must be one of Acquisition, Activation, Retention, Revenue,"
            " Referral, or an input mapping must have the target 'stage'",
        ),
        (
            element(
                "serviceTask", "u", job="lifecycle.update_attributes", inputs={"attributes": "=1"}
            ),
            "'u': input 'attributes' must give a map",
        ),
        (
            element("serviceTask", "e", job="lifecycle.emit_event", inputs={"event": '="a b"'}),
            "'e': input 'event' must be a name of letters, digits, _.-",
        ),
        (
            element("serviceTask", "i", job="x", inputs={"user": "=1"}),
            "'i': input target 'user' is not a usable variable name",
        ),
    ],
)
async def test_static_builtin_parameters_are_checked_when_saved(
    wf: Stub, task: str, expected: str
) -> None:
    assert expected in await refused(wf, linear(start(), task, end()))


async def test_a_job_sees_its_inputs_which_never_reach_the_process(wf: Stub) -> None:
    job_type = "inputs-worker"
    task = element(
        "serviceTask",
        "work",
        job=job_type,
        inputs={"greeting": '="hello " + name', "attempt": "=1"},
        outputs={"reply": '=answer + " after " + string(attempt)'},
    )
    workflow = await deploy(wf, linear(start(), task, end()))
    running = await start_execution(wf, workflow, name="ada")
    (job,) = await jobs(wf, job_type)
    assert struct_to_dict(job.variables) == {"name": "ada", "greeting": "hello ada", "attempt": 1}
    # A result named like an input updates the local variable, as in Zeebe.
    result = {"answer": "hi", "attempt": 2}
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct(result))
    )
    done = await execution(wf, running.id)
    assert done.status == COMPLETED
    assert struct_to_dict(done.variables) == {"name": "ada", "answer": "hi", "reply": "hi after 2"}


async def test_a_failing_input_is_an_incident_naming_it(wf: Stub) -> None:
    task = element("serviceTask", "work", job="never", inputs={"x": "=missing + 1"})
    running = await start_execution(wf, await deploy(wf, linear(start(), task, end())))
    incident = await incident_of(wf, running.id)
    assert incident.element_id == "work"
    assert incident.error_message.startswith("input 'x' of 'work':")


# ---------------------------------------------------------------- 5. collaborations


def collaboration(*processes: str) -> str:
    participants = "".join(
        f'<bpmn:participant id="Participant_{n}" name="Pool {n}" processRef="P{n}"/>'
        for n in range(1, len(processes) + 1)
    )
    flows = (
        '<bpmn:messageFlow id="MessageFlow_1" sourceRef="Participant_2" targetRef="Participant_1"/>'
        if len(processes) > 1
        else ""
    )
    body = "".join(
        f'<bpmn:process id="P{n}" isExecutable="{str(executable).lower()}">{inner}</bpmn:process>'
        for n, (inner, executable) in enumerate(
            (p.split("|", 1)[1], p.split("|", 1)[0] == "x") for p in processes
        )
        for n in [n + 1]
    )
    return (
        f'{HEAD}<bpmn:collaboration id="Collaboration_1">{participants}{flows}'
        f"</bpmn:collaboration>{body}</bpmn:definitions>"
    )


RUNNABLE = "x|" + "".join(
    [start(), element("task", "t"), end(), flow("f1", "start", "t"), flow("f2", "t", "end")]
)
# A pool documenting the customer's side: unsupported elements, never run.
CUSTOMER = "-|" + "".join(
    [
        '<bpmn:startEvent id="c_start"/>',
        '<bpmn:userTask id="c_read"/>',
        '<bpmn:complexGateway id="c_gw"/>',
        '<bpmn:sequenceFlow id="c_f1" sourceRef="c_start" targetRef="c_read"/>',
    ]
)


async def test_a_collaboration_runs_its_one_executable_process(wf: Stub) -> None:
    workflow = await deploy(wf, collaboration(RUNNABLE, CUSTOMER))
    done = await start_execution(wf, workflow)
    assert done.status == COMPLETED and path(done) == ["start", "t", "end"]


async def test_a_collaboration_without_one_executable_process_is_refused(wf: Stub) -> None:
    none = collaboration("-|" + RUNNABLE[2:], CUSTOMER)
    assert "exactly one executable process (found none)" in await refused(wf, none)
    two = collaboration(RUNNABLE, "x|" + RUNNABLE[2:].replace('id="', 'id="b_'))
    assert "exactly one executable process (found 'P1', 'P2')" in await refused(wf, two)
