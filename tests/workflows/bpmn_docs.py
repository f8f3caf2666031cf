"""Small BPMN documents for the tests, built from one-line element helpers."""

from __future__ import annotations

import itertools
import re
from xml.sax.saxutils import escape, quoteattr

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"'
    ' xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI"'
    ' xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"'
    ' xmlns:zeebe="http://camunda.org/schema/zeebe/1.0"'
    ' xmlns:modeler="http://camunda.org/schema/modeler/1.0"'
    ' id="Definitions_1" targetNamespace="http://bpmn.io/schema/bpmn"'
    ' modeler:executionPlatform="Camunda Cloud">\n'
)


def definitions(*elements: str, process_id: str = "Process_1") -> str:
    body = "\n".join(elements)
    names = sorted(set(re.findall(r'messageRef="Msg_([^"]+)"', body)))
    codes = sorted(set(re.findall(r'errorRef="Err_([^"]+)"', body)))
    messages = "".join(f'<bpmn:message id="Msg_{n}" name="{n}"/>\n' for n in names)
    errors = "".join(f'<bpmn:error id="Err_{c}" errorCode="{c}"/>\n' for c in codes)
    diagram = (
        '<bpmndi:BPMNDiagram id="Diagram_1"><bpmndi:BPMNPlane id="Plane_1"'
        f' bpmnElement="{process_id}"><bpmndi:BPMNShape id="Shape_1" bpmnElement="start">'
        '<dc:Bounds x="1" y="1" width="36" height="36"/></bpmndi:BPMNShape>'
        "</bpmndi:BPMNPlane></bpmndi:BPMNDiagram>"
    )
    return (
        f'{HEAD}<bpmn:process id="{process_id}" isExecutable="true">\n{body}\n</bpmn:process>\n'
        f"{messages}{errors}{diagram}\n</bpmn:definitions>\n"
    )


def _timer(duration: str | None, date: str | None, cycle: str | None) -> str:
    for tag, value in (("timeDuration", duration), ("timeDate", date), ("timeCycle", cycle)):
        if value is not None:
            return (
                f"<bpmn:timerEventDefinition><bpmn:{tag}>{escape(value)}</bpmn:{tag}>"
                "</bpmn:timerEventDefinition>"
            )
    return ""


def _message(name: str | None) -> str:
    return f'<bpmn:messageEventDefinition messageRef="Msg_{name}"/>' if name else ""


def start(
    id: str = "start",
    *,
    duration: str | None = None,
    date: str | None = None,
    message: str | None = None,
) -> str:
    inner = _timer(duration, date, None) + _message(message)
    return f'<bpmn:startEvent id="{id}">{inner}</bpmn:startEvent>'


def end(id: str = "end", *, terminate: bool = False) -> str:
    inner = "<bpmn:terminateEventDefinition/>" if terminate else ""
    return f'<bpmn:endEvent id="{id}">{inner}</bpmn:endEvent>'


def service(id: str, task_type: str, retries: int | None = None, **headers: str) -> str:
    retry = f' retries="{retries}"' if retries is not None else ""
    items = "".join(
        f"<zeebe:header key={quoteattr(k)} value={quoteattr(v)}/>" for k, v in headers.items()
    )
    header_block = f"<zeebe:taskHeaders>{items}</zeebe:taskHeaders>" if items else ""
    return (
        f'<bpmn:serviceTask id="{id}"><bpmn:extensionElements>'
        f'<zeebe:taskDefinition type="{task_type}"{retry}/>{header_block}'
        "</bpmn:extensionElements></bpmn:serviceTask>"
    )


def receive(id: str, message: str) -> str:
    return f'<bpmn:receiveTask id="{id}" messageRef="Msg_{message}"/>'


def catch(
    id: str,
    *,
    duration: str | None = None,
    date: str | None = None,
    message: str | None = None,
) -> str:
    return (
        f'<bpmn:intermediateCatchEvent id="{id}">{_timer(duration, date, None)}'
        f"{_message(message)}</bpmn:intermediateCatchEvent>"
    )


def xor(id: str, default: str | None = None) -> str:
    attribute = f' default="{default}"' if default else ""
    return f'<bpmn:exclusiveGateway id="{id}"{attribute}/>'


def parallel(id: str) -> str:
    return f'<bpmn:parallelGateway id="{id}"/>'


def event_gateway(id: str) -> str:
    return f'<bpmn:eventBasedGateway id="{id}"/>'


def boundary(
    id: str,
    attached: str,
    *,
    duration: str | None = None,
    cycle: str | None = None,
    message: str | None = None,
    error: str | None = None,
    interrupting: bool = True,
) -> str:
    cancel = "" if interrupting else ' cancelActivity="false"'
    err = ""
    if error is not None:
        err = (
            f'<bpmn:errorEventDefinition errorRef="Err_{error}"/>'
            if error
            else ("<bpmn:errorEventDefinition/>")
        )
    return (
        f'<bpmn:boundaryEvent id="{id}" attachedToRef="{attached}"{cancel}>'
        f"{_timer(duration, None, cycle)}{_message(message)}{err}</bpmn:boundaryEvent>"
    )


def subprocess(id: str, *children: str) -> str:
    return f'<bpmn:subProcess id="{id}">{"".join(children)}</bpmn:subProcess>'


def call(id: str, workflow_id: str) -> str:
    return (
        f'<bpmn:callActivity id="{id}"><bpmn:extensionElements>'
        f'<zeebe:calledElement processId="{workflow_id}"/></bpmn:extensionElements>'
        "</bpmn:callActivity>"
    )


def with_output(element: str, target: str, source: str) -> str:
    """The element with a Zeebe output mapping, set when it completes."""
    return _with_mappings(element, [("output", target, source)])


def with_inputs(element: str, **inputs: str) -> str:
    """The element with Zeebe input mappings (target=source), its local variables."""
    return _with_mappings(element, [("input", t, s) for t, s in inputs.items()])


def _with_mappings(element: str, mappings: list[tuple[str, str, str]]) -> str:
    items = "".join(
        f"<zeebe:{kind} source={quoteattr(source)} target={quoteattr(target)}/>"
        for kind, target, source in mappings
    )
    mapping = (
        f"<bpmn:extensionElements><zeebe:ioMapping>{items}</zeebe:ioMapping>"
        "</bpmn:extensionElements>"
    )
    if element.endswith("/>"):
        tag = element[1:].split(maxsplit=1)[0]
        return f"{element[:-2]}>{mapping}</{tag}>"
    head, _, rest = element.partition(">")
    return f"{head}>{mapping}{rest}"


def flow(id: str, source: str, target: str, condition: str | None = None) -> str:
    if condition is None:
        return f'<bpmn:sequenceFlow id="{id}" sourceRef="{source}" targetRef="{target}"/>'
    return (
        f'<bpmn:sequenceFlow id="{id}" sourceRef="{source}" targetRef="{target}">'
        f'<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression"'
        f' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{escape(condition)}'
        "</bpmn:conditionExpression></bpmn:sequenceFlow>"
    )


def chain(*ids: str, prefix: str = "f") -> list[str]:
    """Flows joining the elements in order: f1 from ids[0] to ids[1], ..."""
    return [flow(f"{prefix}{n}", a, b) for n, (a, b) in enumerate(itertools.pairwise(ids), 1)]


def emit(id: str, event: str = "nudge", data: str | None = None) -> str:
    if data is None:
        return service(id, "lifecycle.emit_event", event=event)
    return service(id, "lifecycle.emit_event", event=event, data=data)


def linear(*elements: str) -> str:
    """A process whose elements (each with an id) run one after the other."""
    ids = [re.search(r'id="([^"]+)"', e).group(1) for e in elements]  # type: ignore[union-attr]
    return definitions(*elements, *chain(*ids))


def signal_event(kind: str, id: str) -> str:
    """A signal event (`startEvent`, `intermediateCatchEvent`, ...) of the
    document's signal (`with_signal`)."""
    definition = f'<bpmn:signalEventDefinition id="SignalDef_{id}" signalRef="Signal_1"/>'
    return f'<bpmn:{kind} id="{id}">{definition}</bpmn:{kind}>'


def with_signal(bpmn: str, name: str) -> str:
    """The document with its signal, named `name`, among the root elements."""
    root = f'<bpmn:signal id="Signal_1" name="{name}"/>'
    return bpmn.replace("<bpmndi:BPMNDiagram", f"{root}<bpmndi:BPMNDiagram", 1)
