"""The compensation part of the BPMN parser (bpmn.py), checked when the
workflow is saved (docs/workflows.md, "Compensation"):

- A compensation boundary event (`boundaryEvent` with a
  `compensateEventDefinition`) is attached to a task, user task, receive task
  or call activity, has no sequence flows, and is linked by exactly one
  `bpmn:association` (either way round) to its compensation handler.
- A handler is a task (service, send, script, user, undefined, manual,
  business rule) marked `isForCompensation="true"`, without sequence flows,
  boundary events or a multi-instance marker, the handler of one boundary
  event of its scope.
- A compensation intermediate throw or end event may name an `activityRef`:
  an activity of its scope (in an event sub-process: of the scope the event
  sub-process is in) with a compensation boundary event, or an embedded
  sub-process. It always waits for its handlers (`waitForCompletion="false"`
  is refused, as Zeebe always waits).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any
from xml.etree.ElementTree import Element as XmlElement

from services.workflows.bpmn_tasks import BPMN, TASKS
from services.workflows.cel_rules import with_article
from services.workflows.graph import Node

COMPENSATION = "compensation"
# What a compensation boundary event may be attached to, and what may undo it.
COMPENSABLE = frozenset({*TASKS, "userTask", "receiveTask", "callActivity"})
HANDLERS = frozenset({*TASKS, "userTask"})
THROWING = frozenset({"intermediateThrowEvent", "endEvent"})


def is_compensation_boundary(node: Node) -> bool:
    return node.type == "boundaryEvent" and node.event == COMPENSATION


def without_flows(node: Node) -> bool:
    """A compensation boundary event and a handler take no sequence flows."""
    return node.for_compensation or is_compensation_boundary(node)


class CompensationParser:
    """Reads and checks compensation (a mixin of bpmn._Builder)."""

    nodes: dict[str, Node]

    def problem(self, element_id: str, message: str) -> None:
        raise NotImplementedError

    def compensation_fields(
        self, element: XmlElement, name: str, element_id: str, definition: XmlElement | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if element.get("isForCompensation") == "true":
            fields["for_compensation"] = True
        if definition is None or name not in THROWING:
            return fields
        if definition.get("waitForCompletion") == "false":
            self.problem(
                element_id, 'waitForCompletion="false" is not supported: a compensation event waits'
            )
        fields["activity_ref"] = (definition.get("activityRef") or "").strip() or None
        return fields

    def check_compensation(self, process: XmlElement) -> None:
        """Links each compensation boundary event to its handler (through the
        process's associations) and checks handlers and activityRefs."""
        linked: dict[str, list[str]] = defaultdict(list)
        for association in process.iter(f"{{{BPMN}}}association"):
            ends = [association.get("sourceRef") or "", association.get("targetRef") or ""]
            for one, other in (ends, ends[::-1]):
                node, handler = self.nodes.get(one), self.nodes.get(other)
                if node is not None and handler is not None and is_compensation_boundary(node):
                    linked[one].append(other)
        handled_by: dict[str, list[str]] = defaultdict(list)
        hosts: set[str] = set()
        for node in list(self.nodes.values()):
            if is_compensation_boundary(node):
                self._check_boundary(node, linked[node.id], hosts, handled_by)
        for node in self.nodes.values():
            if node.for_compensation:
                self._check_handler(node, handled_by[node.id])
            if node.event == COMPENSATION and node.activity_ref is not None:
                self._check_reference(node, node.activity_ref)

    def _check_boundary(
        self,
        boundary: Node,
        handlers: list[str],
        hosts: set[str],
        handled_by: dict[str, list[str]],
    ) -> None:
        host = self.nodes.get(boundary.attached_to or "")
        if host is not None and host.type not in COMPENSABLE:
            self.problem(
                boundary.id,
                "a compensation boundary event must be on a task or a call activity,"
                f" not {with_article(host.type)}",
            )
        elif host is not None and host.id in hosts:
            self.problem(boundary.id, f"{host.id!r} has another compensation boundary event")
        elif host is not None:
            hosts.add(host.id)
        if boundary.outgoing:
            self.problem(
                boundary.id,
                "a compensation boundary event has no outgoing sequence flows: an association"
                " links it to its handler",
            )
        if len(handlers) != 1:
            self.problem(
                boundary.id,
                "a compensation boundary event needs exactly one association to its"
                f" compensation handler (found {len(handlers)})",
            )
            return
        handler = self.nodes[handlers[0]]
        handled_by[handler.id].append(boundary.id)
        if not handler.for_compensation:
            self.problem(
                handler.id,
                "the activity a compensation boundary event is associated with needs"
                ' isForCompensation="true"',
            )
        elif handler.scope != boundary.scope:
            self.problem(handler.id, "a compensation handler must be in its activity's scope")
        self.nodes[boundary.id] = replace(boundary, handler=handler.id)

    def _check_handler(self, node: Node, boundaries: list[str]) -> None:
        if node.type not in HANDLERS:
            self.problem(
                node.id,
                f"{with_article(node.type)} cannot be a compensation handler (a task can)",
            )
        if node.multi is not None:
            self.problem(node.id, "a multi-instance activity cannot be a compensation handler")
        if node.incoming or node.outgoing:
            self.problem(node.id, "a compensation handler cannot have sequence flows")
        if node.boundaries:
            self.problem(node.id, "a compensation handler cannot have boundary events")
        if not boundaries:
            self.problem(node.id, "the compensation handler has no compensation boundary event")
        elif len(boundaries) > 1:
            self.problem(
                node.id,
                f"a compensation handler belongs to one boundary event (found {len(boundaries)})",
            )

    def _check_reference(self, node: Node, reference: str) -> None:
        target = self.nodes.get(reference)
        compensable = target is not None and (
            (target.type == "subProcess" and not target.triggered)
            or any(is_compensation_boundary(self.nodes[b]) for b in target.boundaries)
        )
        # In an event sub-process, the scope it is in is the one compensated.
        container = self.nodes.get(node.scope or "")
        scope = container.scope if container is not None and container.triggered else node.scope
        if target is None or target.scope != scope or not compensable:
            self.problem(
                node.id,
                f"activityRef {reference!r} must name an activity of the scope the event"
                " compensates that has a compensation boundary event, or an embedded sub-process",
            )
