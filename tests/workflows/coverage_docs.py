"""The documents of the coverage tables of docs/workflows.md: for every cell,
the smallest document that puts the element (or the event, in its position)
in a process as Camunda Modeler does, and the tables as the docs hold them
(read by test_coverage.py and test_coverage_runs.py)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

from tests.workflows.bpmn_docs import HEAD

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
SUPPORTED, REFUSED = "✔", "✘"

# What an event definition needs beside it in the document.
SHARED = (
    '<bpmn:message id="Msg" name="note">'
    '<bpmn:extensionElements><zeebe:subscription correlationKey="=key"/>'
    "</bpmn:extensionElements></bpmn:message>"
    '<bpmn:error id="Err" errorCode="E1"/>'
    '<bpmn:signal id="Sig" name="wake"/>'
    '<bpmn:escalation id="Esc" escalationCode="up"/>'
)


SEGMENT = (
    '<bpmn:extensionElements><zeebe:properties><zeebe:property name="segment"'
    ' value="7d3f2a4e-1c5b-4e8f-9a6d-2b1c0e9f8a7d"/></zeebe:properties></bpmn:extensionElements>'
)


def task(id: str, tag: str = "serviceTask", marker: str = "") -> str:
    return (
        f'<bpmn:{tag} id="{id}"><bpmn:extensionElements>'
        f'<zeebe:taskDefinition type="work"/></bpmn:extensionElements>{marker}</bpmn:{tag}>'
    )


TASK = task("work")


def timer(tag: str, value: str) -> str:
    return (
        f"<bpmn:timerEventDefinition><bpmn:{tag}>{value}</bpmn:{tag}></bpmn:timerEventDefinition>"
    )


# The event definition of each row, by position ("start", "esp", "catch",
# "boundary", "throw", "end"): a message thrown is a job, as in Zeebe.
DEFINITIONS: dict[str, Callable[[str], str]] = {
    "None": lambda _: "",
    "Message": lambda p: (
        (
            '<bpmn:extensionElements><zeebe:taskDefinition type="send"/></bpmn:extensionElements>'
            if p in ("throw", "end")
            else ""
        )
        + '<bpmn:messageEventDefinition messageRef="Msg"/>'
    ),
    "Timer": lambda p: (
        timer("timeDate", "2030-01-01T09:00:00Z") if p == "start" else timer("timeDuration", "PT1H")
    ),
    # At the start, a recurring campaign's: it names its segment (docs/workflows.md).
    "Timer (cycle)": lambda p: (SEGMENT if p == "start" else "") + timer("timeCycle", "R/PT1H"),
    "Error": lambda _: '<bpmn:errorEventDefinition errorRef="Err"/>',
    "Signal": lambda _: '<bpmn:signalEventDefinition signalRef="Sig"/>',
    "Escalation": lambda _: '<bpmn:escalationEventDefinition escalationRef="Esc"/>',
    "Compensation": lambda _: "<bpmn:compensateEventDefinition/>",
    "Conditional": lambda _: (
        '<bpmn:conditionalEventDefinition><bpmn:condition xsi:type="bpmn:tFormalExpression">'
        "=true</bpmn:condition></bpmn:conditionalEventDefinition>"
    ),
    "Link": lambda _: '<bpmn:linkEventDefinition name="jump"/>',
    "Terminate": lambda _: "<bpmn:terminateEventDefinition/>",
    "Cancel": lambda _: "<bpmn:cancelEventDefinition/>",
    "Multiple": lambda p: DEFINITIONS["Message"](p) + DEFINITIONS["Timer (cycle)"](p),
}


def element(tag: str, id: str, inner: str = "") -> str:
    return f'<bpmn:{tag} id="{id}">{inner}</bpmn:{tag}>'


def flow(source: str, target: str) -> str:
    return f'<bpmn:sequenceFlow id="{source}-{target}" sourceRef="{source}" targetRef="{target}"/>'


# The diagram Camunda Modeler saves beside the process (the engine ignores it).
DIAGRAM = (
    '<bpmndi:BPMNDiagram id="Diagram_1"><bpmndi:BPMNPlane id="Plane_1" bpmnElement="Process_1">'
    '<bpmndi:BPMNShape id="Shape_start" bpmnElement="start"><dc:Bounds x="1" y="1" width="36"'
    ' height="36"/></bpmndi:BPMNShape></bpmndi:BPMNPlane></bpmndi:BPMNDiagram>'
)


def process(*elements: str) -> str:
    body = "".join(elements)
    return (
        HEAD.replace(
            "<bpmn:definitions ",
            '<bpmn:definitions xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ',
        )
        + f'{SHARED}<bpmn:process id="Process_1" isExecutable="true">{body}</bpmn:process>'
        + f"{DIAGRAM}</bpmn:definitions>"
    )


def line(*elements: tuple[str, str]) -> str:
    """Elements (id, xml) in a row from a start event to an end event."""
    ids = ["start", *(i for i, _ in elements), "end"]
    nodes = [
        '<bpmn:startEvent id="start"/>',
        *(x for _, x in elements),
        '<bpmn:endEvent id="end"/>',
    ]
    return "".join(nodes) + "".join(flow(a, b) for a, b in itertools.pairwise(ids))


def sub_process(id: str = "sub", attributes: str = "") -> str:
    inner = '<bpmn:startEvent id="inner"/>' + task("inner-work") + '<bpmn:endEvent id="inner-end"/>'
    inner += flow("inner", "inner-work") + flow("inner-work", "inner-end")
    return f'<bpmn:subProcess id="{id}"{attributes}>{inner}</bpmn:subProcess>'


def event_document(row: str, position: str) -> str:
    """The document with the event of `row` in `position`."""
    definition = DEFINITIONS[row]
    if position == "start":
        event = f'<bpmn:startEvent id="ev">{definition("start")}</bpmn:startEvent>'
        return process(event, '<bpmn:endEvent id="end"/>', flow("ev", "end"))
    if position in ("esp_interrupting", "esp_non_interrupting"):
        interrupting = "true" if position == "esp_interrupting" else "false"
        esp = (
            '<bpmn:subProcess id="esp" triggeredByEvent="true">'
            f'<bpmn:startEvent id="ev" isInterrupting="{interrupting}">{definition("esp")}'
            '</bpmn:startEvent><bpmn:endEvent id="esp-end"/>'
            f"{flow('ev', 'esp-end')}</bpmn:subProcess>"
        )
        return process(line(("work", TASK)), esp)
    if position in ("catch", "throw") and row == "Link":
        throw = element("intermediateThrowEvent", "ev", definition(position))
        catch = element("intermediateCatchEvent", "ev-catch", definition(position))
        return process(
            '<bpmn:startEvent id="start"/>',
            throw,
            catch,
            '<bpmn:endEvent id="end"/>',
            flow("start", "ev"),
            flow("ev-catch", "end"),
        )
    if position == "catch":
        tag = "intermediateCatchEvent"
        return process(line(("ev", f'<bpmn:{tag} id="ev">{definition("catch")}</bpmn:{tag}>')))
    if position == "throw":
        tag = "intermediateThrowEvent"
        return process(line(("ev", f'<bpmn:{tag} id="ev">{definition("throw")}</bpmn:{tag}>')))
    if position == "end":
        event = f'<bpmn:endEvent id="ev">{definition("end")}</bpmn:endEvent>'
        return process('<bpmn:startEvent id="start"/>', event, flow("start", "ev"))
    if row == "Compensation":
        # On a task, linked to its handler by an association (no sequence flows).
        handler = task("undo").replace('id="undo"', 'id="undo" isForCompensation="true"')
        boundary = (
            f'<bpmn:boundaryEvent id="ev" attachedToRef="work">{definition("boundary")}'
            '</bpmn:boundaryEvent><bpmn:association id="link" sourceRef="ev" targetRef="undo"/>'
        )
        return process(line(("work", TASK)), handler, boundary)
    cancel = "true" if position == "boundary_interrupting" else "false"
    boundary = (
        f'<bpmn:boundaryEvent id="ev" attachedToRef="sub" cancelActivity="{cancel}">'
        f'{definition("boundary")}</bpmn:boundaryEvent><bpmn:endEvent id="after"/>'
        + flow("ev", "after")
    )
    return process(line(("sub", sub_process())), boundary)


def multi_instance(sequential: str) -> str:
    return (
        f'<bpmn:multiInstanceLoopCharacteristics isSequential="{sequential}">'
        '<bpmn:extensionElements><zeebe:loopCharacteristics inputCollection="=[1, 2]"'
        ' inputElement="item"/></bpmn:extensionElements></bpmn:multiInstanceLoopCharacteristics>'
    )


# The element of each row of the elements table, between a start and an end event.
ELEMENTS: dict[str, str] = {
    "Service task": task("el"),
    "User task": '<bpmn:userTask id="el"/>',
    "Send task": task("el", "sendTask"),
    "Receive task": '<bpmn:receiveTask id="el" messageRef="Msg"/>',
    "Business rule task": task("el", "businessRuleTask"),
    "Script task": (
        '<bpmn:scriptTask id="el"><bpmn:extensionElements>'
        '<zeebe:script expression="=1 + 1" resultVariable="two"/>'
        "</bpmn:extensionElements></bpmn:scriptTask>"
    ),
    "Manual task": '<bpmn:manualTask id="el"/>',
    "Undefined task": '<bpmn:task id="el"/>',
    "Embedded sub-process": sub_process("el"),
    "Call activity": (
        '<bpmn:callActivity id="el"><bpmn:extensionElements>'
        '<zeebe:calledElement processId="0b6b7d0e-6a53-4a55-9b8e-0e6f0c1d2a33"/>'
        "</bpmn:extensionElements></bpmn:callActivity>"
    ),
    "Transaction": sub_process("el").replace("bpmn:subProcess", "bpmn:transaction"),
    "Ad-hoc sub-process": sub_process("el").replace("bpmn:subProcess", "bpmn:adHocSubProcess"),
    "Multi-instance (parallel)": task("el", marker=multi_instance("false")),
    "Multi-instance (sequential)": task("el", marker=multi_instance("true")),
    "Loop": task("el", marker="<bpmn:standardLoopCharacteristics/>"),
}


def gateway_document(kind: str) -> str:
    """A fork and, where the gateway joins, its join."""
    if kind == "eventBasedGateway":
        catches = (
            '<bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition>'
            "<bpmn:timeDuration>PT1H</bpmn:timeDuration></bpmn:timerEventDefinition>"
            '</bpmn:intermediateCatchEvent><bpmn:intermediateCatchEvent id="note">'
            '<bpmn:messageEventDefinition messageRef="Msg"/></bpmn:intermediateCatchEvent>'
        )
        return process(
            '<bpmn:startEvent id="start"/><bpmn:eventBasedGateway id="el"/>',
            catches,
            '<bpmn:endEvent id="end"/>',
            flow("start", "el"),
            flow("el", "wait"),
            flow("el", "note"),
            flow("wait", "end"),
            flow("note", "end"),
        )
    condition = element("conditionExpression", "", "=true").replace(
        'id=""', 'xsi:type="bpmn:tFormalExpression"'
    )
    joins = kind != "exclusiveGateway"
    return process(
        f'<bpmn:startEvent id="start"/><bpmn:{kind} id="el"/>',
        f'<bpmn:{kind} id="join"/>' if joins else "",
        '<bpmn:endEvent id="end"/>',
        flow("start", "el"),
        f'<bpmn:sequenceFlow id="a" sourceRef="el" targetRef="{"join" if joins else "end"}">'
        f"{condition if kind != 'parallelGateway' else ''}</bpmn:sequenceFlow>",
        f'<bpmn:sequenceFlow id="b" sourceRef="el" targetRef="{"join" if joins else "end"}">'
        f"{condition if kind != 'parallelGateway' else ''}</bpmn:sequenceFlow>",
        flow("join", "end") if joins else "",
    )


GATEWAYS = {
    "Exclusive gateway": "exclusiveGateway",
    "Parallel gateway": "parallelGateway",
    "Inclusive gateway": "inclusiveGateway",
    "Event-based gateway": "eventBasedGateway",
    "Complex gateway": "complexGateway",
}
POSITIONS = {
    "Start": "start",
    "Event sub-process start (interrupting)": "esp_interrupting",
    "Event sub-process start (non-interrupting)": "esp_non_interrupting",
    "Intermediate catch": "catch",
    "Boundary (interrupting)": "boundary_interrupting",
    "Boundary (non-interrupting)": "boundary_non_interrupting",
    "Intermediate throw": "throw",
    "End": "end",
}


def tables() -> dict[str, list[dict[str, str]]]:
    """The tables under "## Coverage", by the heading above each: rows of cells by column."""
    text = DOCS.read_text()
    section = text.split("\n## Coverage\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[dict[str, str]]] = {}
    for heading, body in re.findall(r"\n### ([^\n]+)\n(.*?)(?=\n### |\Z)", section, re.S):
        lines = [row for row in body.splitlines() if row.startswith("|")]
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        found[heading] = [
            dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
            for row in lines[2:]
        ]
    return found


def cells() -> list[tuple[str, str, str, str]]:
    """(table, row, column, mark) of every marked cell."""
    marked = []
    for heading, rows in tables().items():
        for row in rows:
            name = next(iter(row.values()))
            marked += [
                (heading, name, column, mark)
                for column, mark in list(row.items())[1:]
                if mark in (SUPPORTED, REFUSED)
            ]
    return marked


def document(table: str, row: str, column: str) -> str:
    if table == "Events":
        return event_document(row, POSITIONS[column])
    if row in GATEWAYS:
        return gateway_document(GATEWAYS[row])
    return process(line(("el", ELEMENTS[row])))
