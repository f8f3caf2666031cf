"""Event sub-processes and error end events for the tests' documents, as
Camunda Modeler 5 saves them."""

from __future__ import annotations

from xml.sax.saxutils import escape

from tests.workflows.bpmn_docs import definitions

SIGNAL_ROOT = '<bpmn:signal id="Signal_esp" name="{0}"/>'
ESCALATION_ROOT = '<bpmn:escalation id="Escalation_esp" name="raised" escalationCode="{0}"/>'


def document(*elements: str, signal: str = "", escalation: str = "") -> str:
    """The elements in a process, with a signal and an escalation if named."""
    roots = (SIGNAL_ROOT.format(signal) if signal else "") + (
        ESCALATION_ROOT.format(escalation) if escalation else ""
    )
    xml = definitions(*elements)
    return xml.replace("<bpmndi:BPMNDiagram", f"{roots}<bpmndi:BPMNDiagram", 1)


def on_message(name: str) -> str:
    return f'<bpmn:messageEventDefinition id="MsgDef_{name}" messageRef="Msg_{name}"/>'


def on_timer(*, duration: str | None = None, cycle: str | None = None) -> str:
    tag, value = ("timeCycle", cycle) if cycle else ("timeDuration", duration or "PT1M")
    return (
        f'<bpmn:timerEventDefinition id="TimerDef_esp"><bpmn:{tag}>{escape(value)}</bpmn:{tag}>'
        "</bpmn:timerEventDefinition>"
    )


def on_error(code: str | None = None) -> str:
    ref = f' errorRef="Err_{code}"' if code else ""
    return f'<bpmn:errorEventDefinition id="ErrDef_{code or "all"}"{ref}/>'


def on_signal() -> str:
    return '<bpmn:signalEventDefinition id="SigDef_esp" signalRef="Signal_esp"/>'


def on_escalation(*, catch_all: bool = False) -> str:
    ref = "" if catch_all else ' escalationRef="Escalation_esp"'
    return f'<bpmn:escalationEventDefinition id="EscDef_esp"{ref}/>'


def esp(id: str, trigger: str, *children: str, interrupting: bool = True) -> str:
    """An event sub-process whose start event `{id}_start` has the `trigger`
    definition; `children` follow from it."""
    flag = "" if interrupting else ' isInterrupting="false"'
    return (
        f'<bpmn:subProcess id="{id}" name="{id.title()}" triggeredByEvent="true">'
        f'<bpmn:startEvent id="{id}_start" name="On event"{flag}>{trigger}</bpmn:startEvent>'
        f"{''.join(children)}</bpmn:subProcess>"
    )


def error_end(id: str, code: str) -> str:
    return (
        f'<bpmn:endEvent id="{id}" name="Failed">'
        f'<bpmn:errorEventDefinition id="ErrEnd_{id}" errorRef="Err_{code}"/></bpmn:endEvent>'
    )


def escalation_end(id: str) -> str:
    return (
        f'<bpmn:endEvent id="{id}"><bpmn:escalationEventDefinition id="EscEnd_{id}"'
        ' escalationRef="Escalation_esp"/></bpmn:endEvent>'
    )
