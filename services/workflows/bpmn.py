"""BPMN 2.0 XML to a validated process graph, when a workflow is saved.

The XML is parsed with defusedxml (no DTD, no entities, no network) behind a
size limit. Only the subset in docs/workflows.md is accepted; each problem is
reported with the id of the element at fault. Diagram and vendor extension
elements are ignored, except the Zeebe (and Camunda 7) extensions that name a
task's job type, its headers, its script, its input and output mappings and a
call activity's workflow (read by bpmn_tasks.py). In a collaboration, only the
one executable process is read: the other pools and the message flows are
documentation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any
from xml.etree.ElementTree import Element as XmlElement

import defusedxml.ElementTree as SafeTree
from defusedxml import DefusedXmlException

from services.workflows.bpmn_campaigns import campaign_problems, read_segment
from services.workflows.bpmn_compensation import CompensationParser, without_flows
from services.workflows.bpmn_esp import EspParser
from services.workflows.bpmn_events import EventDefinitions, EventParser, link_target
from services.workflows.bpmn_markers import read_marker
from services.workflows.bpmn_tasks import BPMN, JOB_EVENTS, TASKS, TaskParser
from services.workflows.bpmn_tasks import local_name as _local
from services.workflows.cel_rules import with_article
from services.workflows.expressions import (
    ExpressionError,
    compile_expression,
    parse_cycle,
    parse_date,
    parse_duration,
)
from services.workflows.graph import Definition, Flow, Node, Timer
from services.workflows.user_task_rules import read_spec

MAX_ELEMENTS = 2000
# Sub-processes inside sub-processes: the walks over scopes (here and in the
# engine) recurse once per level, so a deeper document is refused, not run.
MAX_NESTING = 32

ACTIVITIES = frozenset({"receiveTask", "subProcess", "callActivity", "userTask", *TASKS})
FLOW_NODES = frozenset(
    {
        "startEvent",
        "endEvent",
        "intermediateCatchEvent",
        "intermediateThrowEvent",
        "boundaryEvent",
        "exclusiveGateway",
        "parallelGateway",
        "inclusiveGateway",
        "eventBasedGateway",
        *ACTIVITIES,
    }
)
# Gateways whose outgoing flows take conditions.
CONDITIONAL = frozenset({"exclusiveGateway", "inclusiveGateway"})
# Elements that carry no behaviour: accepted and ignored.
IGNORED = frozenset(
    {
        "documentation",
        "extensionElements",
        "laneSet",
        "textAnnotation",
        "association",
        "group",
        "dataObject",
        "dataObjectReference",
        "dataStoreReference",
        "property",
        "incoming",
        "outgoing",
        # Read with their activity (bpmn_markers.py).
        "multiInstanceLoopCharacteristics",
        "standardLoopCharacteristics",
    }
)
EVENT_DEFINITIONS = {
    "timerEventDefinition": "timer",
    "messageEventDefinition": "message",
    "terminateEventDefinition": "terminate",
    "errorEventDefinition": "error",
    "signalEventDefinition": "signal",
    "escalationEventDefinition": "escalation",
    "linkEventDefinition": "link",
    "compensateEventDefinition": "compensation",
}
ALLOWED_EVENTS: dict[str, set[str | None]] = {
    "startEvent": {None, "timer", "message", "signal", "error", "escalation"},
    "endEvent": {None, "terminate", "message", "signal", "escalation", "error", "compensation"},
    "intermediateCatchEvent": {"timer", "message", "signal", "link"},
    "intermediateThrowEvent": {None, "message", "signal", "escalation", "link", "compensation"},
    "boundaryEvent": {"timer", "message", "error", "signal", "escalation", "compensation"},
}


@dataclass(frozen=True)
class Problem:
    element_id: str
    message: str

    def describe(self) -> str:
        return f"element {self.element_id!r}: {self.message}" if self.element_id else self.message


class BpmnError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.describe() for p in problems))
        self.problems = problems


def parse(xml: str, max_bytes: int) -> Definition:
    """The validated definition of `xml`; BpmnError lists every problem found."""
    size = len(xml.encode("utf-8"))
    if size > max_bytes:
        raise BpmnError([Problem("", f"is {size} bytes, more than the limit of {max_bytes}")])
    try:
        root = SafeTree.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise BpmnError(
            [Problem("", f"DTDs and entities are not allowed ({type(error).__name__})")]
        ) from error
    except SafeTree.ParseError as error:
        raise BpmnError([Problem("", f"is not well-formed XML: {error}")]) from error
    return _Builder(root).build()


class _Builder(TaskParser, EventParser, EspParser, CompensationParser):
    def __init__(self, root: XmlElement) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.nodes: dict[str, Node] = {}
        self.flows: dict[str, Flow] = {}
        self.messages: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.expressions: list[tuple[str, str]] = []
        self.seen_ids: set[str] = set()
        self.definitions = EventDefinitions(root)
        # Event sub-processes, by id (bpmn_esp.py).
        self.triggered: set[str] = set()

    def problem(self, element_id: str, message: str) -> None:
        self.problems.append(Problem(element_id, message))

    def build(self) -> Definition:
        if _local(self.root.tag) != (BPMN, "definitions"):
            raise BpmnError([Problem("", "the root element must be bpmn:definitions")])
        process = self._executable_process()
        for child in self.root:
            namespace, name = _local(child.tag)
            if namespace == BPMN and name == "message":
                self.messages[child.get("id", "")] = (child.get("name") or "").strip()
            elif namespace == BPMN and name == "error":
                self.errors[child.get("id", "")] = (child.get("errorCode") or "").strip()
        process_id = process.get("id") or "process"
        self._scope(process, None, 0)
        if len(self.nodes) + len(self.flows) > MAX_ELEMENTS:
            raise BpmnError([Problem("", f"has more than {MAX_ELEMENTS} elements")])
        self._connect()
        start = self._check_scopes()
        self._check_nodes()
        self.check_compensation(process)  # bpmn_compensation.py
        self._check_reachable(start)
        for element_id, source in self.expressions:
            try:
                compile_expression(source)
            except ExpressionError as error:
                self.problem(element_id, f"expression {error}")
        if self.problems:
            raise BpmnError(self.problems)
        assert start is not None
        return Definition(process_id, start, self.nodes, self.flows)

    def _executable_process(self) -> XmlElement:
        processes = [c for c in self.root if _local(c.tag) == (BPMN, "process")]
        executable = [p for p in processes if p.get("isExecutable") == "true"]
        # bpmn.io marks its single process not executable by default.
        if not executable and len(processes) == 1:
            executable = processes
        if not executable:
            hint = ': mark the one to run isExecutable="true"' if processes else ""
            raise BpmnError(
                [Problem("", f"must have exactly one executable process (found none){hint}")]
            )
        if len(executable) > 1:
            # Zeebe deploys each as a process of its own; a workflow is one process.
            found = ", ".join(repr(p.get("id")) for p in executable[:10])
            more = f" and {len(executable) - 10} more" if len(executable) > 10 else ""
            raise BpmnError(
                [
                    Problem(
                        "",
                        f"must have exactly one executable process (found {found}{more}):"
                        " a workflow runs one process; save each as a workflow of its own",
                    )
                ]
            )
        return executable[0]

    def _scope(self, container: XmlElement, scope: str | None, depth: int) -> None:
        for child in container:
            namespace, name = _local(child.tag)
            if namespace != BPMN or name in IGNORED:
                continue
            element_id = child.get("id") or ""
            if not element_id:
                self.problem("", f"{with_article(name)} has no id")
                continue
            if element_id in self.seen_ids:
                self.problem(element_id, "the id is used twice")
                continue
            self.seen_ids.add(element_id)
            if name == "sequenceFlow":
                self._flow(child, element_id)
            elif name in FLOW_NODES:
                self._node(child, name, element_id, scope, depth)
            else:
                self.problem(element_id, f"{name} is not supported")

    def _flow(self, element: XmlElement, element_id: str) -> None:
        condition = None
        for child in element:
            if _local(child.tag) == (BPMN, "conditionExpression"):
                condition = (child.text or "").strip() or None
        if condition is not None:
            self.expressions.append((element_id, condition))
        self.flows[element_id] = Flow(
            element_id, element.get("sourceRef", ""), element.get("targetRef", ""), condition
        )

    def _node(
        self, element: XmlElement, name: str, element_id: str, scope: str | None, depth: int
    ) -> None:
        # A multi-instance marker (bpmn_markers.py).
        multi = read_marker(element, name, element_id, self.problem, self.expressions)
        event, definition = self._event(element, name, element_id)
        fields: dict[str, Any] = {"event": event, "multi": multi}
        if event == "timer" and definition is not None:
            fields["timer"] = self._timer(definition, element_id)
        # A message throw or end event is a job (bpmn_tasks.py): its messageRef is documentation.
        if (event == "message" and name not in JOB_EVENTS) or name == "receiveTask":
            source = definition if definition is not None else element
            fields["message"] = self._message(source, element_id)
        if event == "error" and definition is not None:
            error_ref = definition.get("errorRef")
            fields["error_code"] = self.errors.get(error_ref or "") or None
        fields.update(self.task_fields(element, name, element_id, event))
        esp = name == "startEvent" and scope in self.triggered
        fields.update(self.event_fields(element, name, element_id, event, definition, in_esp=esp))
        fields.update(self.compensation_fields(element, name, element_id, definition))
        if name == "userTask":
            fields["user_task"] = read_spec(element, element_id, self.problem, self.expressions)
        if name == "callActivity":
            fields.update(self.called_fields(element, element_id))
        if name in ("exclusiveGateway", "inclusiveGateway"):
            fields["default"] = element.get("default")
        if name == "boundaryEvent":
            fields["attached_to"] = element.get("attachedToRef")
            fields["interrupting"] = element.get("cancelActivity", "true") != "false"
        if name == "startEvent":
            fields["interrupting"] = element.get("isInterrupting", "true") != "false"
            if scope is None:
                fields["segment"] = read_segment(element)  # a campaign's (bpmn_campaigns.py)
        fields["outputs"] = self.outputs(element, element_id)
        if name == "subProcess":
            if element.get("triggeredByEvent") == "true":
                fields["triggered"] = True
                self.triggered.add(element_id)
            if depth == MAX_NESTING:
                raise BpmnError(
                    [Problem(element_id, f"sub-processes nest more than {MAX_NESTING} deep")]
                )
            self._scope(element, element_id, depth + 1)
        self.nodes[element_id] = Node(element_id, name, scope, **fields)

    def _event(
        self, element: XmlElement, name: str, element_id: str
    ) -> tuple[str | None, XmlElement | None]:
        found = []
        for child in element:
            namespace, tag = _local(child.tag)
            if namespace == BPMN and tag.endswith("EventDefinition"):
                found.append((EVENT_DEFINITIONS.get(tag, tag), child))
        if len(found) > 1:
            self.problem(element_id, "an event with several event definitions is not supported")
            return found[0]
        event, definition = found[0] if found else (None, None)
        allowed = ALLOWED_EVENTS.get(name)
        if allowed is not None and event not in allowed:
            kind = f"{with_article(event)} {name}" if event else f"a none {name}"
            self.problem(element_id, f"{kind} is not supported")
        elif allowed is None and event is not None:
            self.problem(element_id, f"{with_article(name)} cannot have an event definition")
        return event, definition

    def _timer(self, definition: XmlElement, element_id: str) -> Timer | None:
        values = [
            (tag[4:].lower(), (child.text or "").strip())
            for child in definition
            for namespace, tag in [_local(child.tag)]
            if namespace == BPMN and tag in ("timeDuration", "timeDate", "timeCycle")
        ]
        if len(values) != 1 or not values[0][1]:
            self.problem(element_id, "a timer needs one of timeDuration, timeDate, timeCycle")
            return None
        kind, value = values[0]
        if value.startswith("="):
            self.expressions.append((element_id, value))
            return Timer(kind, value)
        try:
            {"duration": parse_duration, "date": parse_date, "cycle": parse_cycle}[kind](value)
        except ExpressionError as error:
            self.problem(element_id, f"timer {error}")
        return Timer(kind, value)

    def _message(self, source: XmlElement, element_id: str) -> str | None:
        name = self.messages.get(source.get("messageRef") or "")
        if not name:
            self.problem(element_id, "needs a messageRef to a bpmn:message with a name")
        return name or None

    def _connect(self) -> None:
        for flow in self.flows.values():
            source, target = self.nodes.get(flow.source), self.nodes.get(flow.target)
            if source is None or target is None:
                self.problem(flow.id, "the flow must connect two elements of the process")
                continue
            if source.scope != target.scope:
                self.problem(flow.id, "the flow crosses a sub-process boundary")
                continue
            source.outgoing.append(flow.id)
            target.incoming.append(flow.id)
        for node in self.nodes.values():
            if node.type != "boundaryEvent":
                continue
            host = self.nodes.get(node.attached_to or "")
            if host is None or host.type not in ACTIVITIES or host.scope != node.scope:
                self.problem(node.id, "a boundary event must be attached to an activity")
            else:
                host.boundaries.append(node.id)

    def _check_scopes(self) -> str | None:
        """Each scope has exactly one start event; returns the process's."""
        scopes: dict[str | None, list[Node]] = {None: []}
        for node in self.nodes.values():
            if node.type == "subProcess":
                scopes.setdefault(node.id, [])
            if node.type == "startEvent":
                scopes.setdefault(node.scope, []).append(node)
        for scope, starts in scopes.items():
            if len(starts) != 1:
                where = f"sub-process {scope!r}" if scope else "the process"
                self.problem(scope or "", f"{where} needs exactly one start event")
                continue
            start = starts[0]
            if scope is not None:
                if start.event is not None and scope not in self.triggered:
                    self.problem(start.id, "a sub-process starts with a none start event")
                self.nodes[scope] = _with(self.nodes[scope], start=start.id)
            else:
                for message in campaign_problems(start):
                    self.problem(start.id, message)
        starts = scopes[None]
        return starts[0].id if len(starts) == 1 else None

    def _check_nodes(self) -> None:
        self.check_events(self.nodes)
        self.check_event_subprocesses()
        for node in self.nodes.values():
            self._check_connections(node)
            if node.type in ("exclusiveGateway", "inclusiveGateway"):
                self._check_exclusive(node)
            if node.type == "eventBasedGateway":
                self._check_event_gateway(node)
            if node.type == "boundaryEvent" and node.timer and node.timer.kind == "cycle":
                if node.interrupting:
                    self.problem(node.id, "a timer cycle needs a non-interrupting boundary event")
            elif node.timer and node.timer.kind == "cycle" and node.type != "startEvent":
                self.problem(node.id, "a timer cycle is only for non-interrupting boundary events")
            if node.type == "boundaryEvent" and node.event == "error" and not node.interrupting:
                self.problem(node.id, "an error boundary event is always interrupting")
        for flow in self.flows.values():
            source = self.nodes.get(flow.source)
            if flow.condition and source and source.type not in CONDITIONAL:
                self.problem(
                    flow.id, "conditions are only for flows out of exclusive and inclusive gateways"
                )

    def _check_connections(self, node: Node) -> None:
        # A link catch event is entered by its throw, a link throw leaves by it.
        linked = node.event == "link"
        takes_incoming = node.type not in ("startEvent", "boundaryEvent") and not (
            linked and node.type == "intermediateCatchEvent"
        )
        if node.triggered or without_flows(node):
            return  # bpmn_esp.py, bpmn_compensation.py: no flows at all
        gives_outgoing = node.type != "endEvent" and not (
            linked and node.type == "intermediateThrowEvent"
        )
        if takes_incoming and not node.incoming:
            self.problem(node.id, "has no incoming sequence flow")
        if not takes_incoming and node.incoming:
            kind = "a link catch event" if linked else with_article(node.type)
            self.problem(node.id, f"{kind} cannot have incoming sequence flows")
        if gives_outgoing and not node.outgoing:
            self.problem(node.id, "has no outgoing sequence flow")
        if not gives_outgoing and node.outgoing:
            kind = "a link throw event" if linked else "an end event"
            self.problem(node.id, f"{kind} cannot have outgoing sequence flows")

    def _check_exclusive(self, node: Node) -> None:
        if node.default is not None:
            if node.default not in node.outgoing:
                self.problem(node.id, "the default flow must be one of its outgoing flows")
            elif self.flows[node.default].condition:
                self.problem(node.id, "the default flow cannot have a condition")
        if len(node.outgoing) > 1:
            missing = [
                f for f in node.outgoing if f != node.default and not self.flows[f].condition
            ]
            if missing:
                self.problem(
                    node.id,
                    "needs a default flow or a condition on every outgoing flow"
                    f" ({', '.join(missing)} has none)",
                )

    def _check_event_gateway(self, node: Node) -> None:
        if len(node.outgoing) < 2:
            self.problem(node.id, "an event-based gateway needs at least two outgoing flows")
        for flow_id in node.outgoing:
            target = self.nodes.get(self.flows[flow_id].target)
            if target is None:
                continue
            if target.type != "intermediateCatchEvent":
                self.problem(node.id, f"leads to {target.id!r}, which is not a catch event")
            elif len(target.incoming) != 1:
                self.problem(target.id, "an event after an event-based gateway takes one flow")
            elif target.inputs:
                self.problem(
                    target.id, "an event after an event-based gateway takes no input mappings"
                )

    def _check_reachable(self, start: str | None) -> None:
        reached: set[str] = set()
        # Event sub-processes start by their event.
        queue = deque([start] if start else [])
        queue.extend(self.triggered)
        # Compensation handlers run when a compensation event is thrown.
        queue.extend(n.id for n in self.nodes.values() if n.for_compensation)
        while queue:
            node_id = queue.popleft()
            if node_id in reached or node_id not in self.nodes:
                continue
            reached.add(node_id)
            node = self.nodes[node_id]
            queue.extend(self.flows[f].target for f in node.outgoing)
            queue.extend(node.boundaries)
            if node.start:
                queue.append(node.start)
            if node.event == "link" and node.type == "intermediateThrowEvent":
                queue.append(link_target(self.nodes, node) or "")
        for node_id in self.nodes.keys() - reached:
            self.problem(node_id, "cannot be reached from the start event")


def _with(node: Node, **changes: Any) -> Node:
    data = {**asdict(node), **changes}
    data["timer"], data["task"], data["script"] = node.timer, node.task, node.script
    data["outputs"], data["inputs"] = node.outputs, node.inputs
    data["multi"] = node.multi
    return Node(**data)
