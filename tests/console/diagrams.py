"""A BPMN document with its diagram (every shape and edge), for the console's
tests: start -> a service task -> a receive task -> end, each name chosen by
the test (the XSS payloads go there)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from console.layout import BPMN

_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"'
    ' xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI"'
    ' xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"'
    ' xmlns:di="http://www.omg.org/spec/DD/20100524/DI"'
    ' xmlns:zeebe="http://camunda.org/schema/zeebe/1.0"'
    ' id="Definitions_console" targetNamespace="http://bpmn.io/schema/bpmn">'
)
# The elements in a row: id, tag, width, height.
ELEMENTS = (
    ("start", "startEvent", 36, 36),
    ("work", "serviceTask", 100, 80),
    ("wait", "receiveTask", 100, 80),
    ("end", "endEvent", 36, 36),
)
_X = {"start": 100, "work": 200, "wait": 360, "end": 520}


def _shape(element_id: str, width: int, height: int) -> str:
    y = 100 - height // 2
    return (
        f'<bpmndi:BPMNShape id="{element_id}_di" bpmnElement="{element_id}">'
        f'<dc:Bounds x="{_X[element_id]}" y="{y}" width="{width}" height="{height}"/>'
        "</bpmndi:BPMNShape>"
    )


def _edge(flow: str, source: str, target: str) -> str:
    sizes = {e[0]: e[2] for e in ELEMENTS}
    return (
        f'<bpmndi:BPMNEdge id="{flow}_di" bpmnElement="{flow}">'
        f'<di:waypoint x="{_X[source] + sizes[source]}" y="100"/>'
        f'<di:waypoint x="{_X[target]}" y="100"/></bpmndi:BPMNEdge>'
    )


def job_then_message(job_type: str, names: dict[str, str]) -> str:
    """The document; `names` gives elements their (display) names."""
    inner = {
        "work": f'<bpmn:extensionElements><zeebe:taskDefinition type="{job_type}"/>'
        "</bpmn:extensionElements>",
    }
    nodes = "".join(
        f'<bpmn:{tag} id="{eid}" name={quoteattr(names.get(eid, eid))}'
        + (' messageRef="Msg_go"' if eid == "wait" else "")
        + f">{inner.get(eid, '')}</bpmn:{tag}>"
        for eid, tag, _, _ in ELEMENTS
    )
    pairs = [(ELEMENTS[n][0], ELEMENTS[n + 1][0]) for n in range(len(ELEMENTS) - 1)]
    flows = "".join(
        f'<bpmn:sequenceFlow id="f{n}" sourceRef="{a}" targetRef="{b}"/>'
        for n, (a, b) in enumerate(pairs)
    )
    shapes = "".join(_shape(eid, w, h) for eid, _, w, h in ELEMENTS)
    edges = "".join(_edge(f"f{n}", a, b) for n, (a, b) in enumerate(pairs))
    return (
        f'{_HEAD}<bpmn:process id="console_process" isExecutable="true">{nodes}{flows}'
        '</bpmn:process><bpmn:message id="Msg_go" name="go"/>'
        '<bpmndi:BPMNDiagram id="diagram_1"><bpmndi:BPMNPlane id="plane_1"'
        f' bpmnElement="console_process">{shapes}{edges}</bpmndi:BPMNPlane>'
        "</bpmndi:BPMNDiagram></bpmn:definitions>"
    )


def flow_nodes(document: str) -> set[str]:
    """The ids of the elements of the document's process that are drawn as shapes."""
    [process] = ET.fromstring(document).findall(f"{{{BPMN}}}process")
    skipped = {"sequenceFlow", "extensionElements"}
    return {el.get("id", "") for el in process if el.tag.split("}")[1] not in skipped}
