"""The event sub-process and error end event part of the BPMN parser (bpmn.py),
checked when the workflow is saved.

- An event sub-process (`bpmn:subProcess triggeredByEvent="true"`) in the
  process or in an embedded sub-process has no sequence flows in or out, no
  boundary event, no multi-instance marker, and one start event: message,
  timer, signal, error or escalation, interrupting (the default) or not
  (`isInterrupting="false"`). An error start event is always interrupting; a
  timer cycle is only for a non-interrupting one. An error or escalation start
  event without a reference catches every code. Event sub-processes inside
  event sub-processes are refused.
- An error end event (`bpmn:endEvent` with an `errorEventDefinition`) names a
  `bpmn:error` with a static `errorCode`.
- Error and escalation start events are only for event sub-processes.
"""

from __future__ import annotations

from services.workflows.cel_rules import with_article
from services.workflows.graph import Node

# The start events of an event sub-process.
ESP_TRIGGERS = frozenset({"message", "timer", "signal", "error", "escalation"})


class EspParser:
    """Checks of event sub-processes and error end events (a mixin of bpmn._Builder)."""

    nodes: dict[str, Node]

    def problem(self, element_id: str, message: str) -> None:
        raise NotImplementedError

    def check_event_subprocesses(self) -> None:
        for node in self.nodes.values():
            if node.type == "endEvent" and node.event == "error" and not node.error_code:
                self.problem(
                    node.id,
                    "an error end event needs an errorRef to a bpmn:error with a static errorCode",
                )
            if node.type == "startEvent":
                self._check_start(node)
            if node.type != "subProcess" or not node.triggered:
                continue
            refused = {
                "have sequence flows": node.incoming or node.outgoing,
                "have boundary events": node.boundaries,
                "have input mappings": node.inputs,
                "be multi-instance": node.multi is not None,
            }
            for what, present in refused.items():
                if present:
                    self.problem(node.id, f"an event sub-process cannot {what}")
            enclosing = self.nodes.get(node.scope or "")
            if enclosing is not None and enclosing.triggered:
                self.problem(
                    node.id,
                    "an event sub-process inside an event sub-process is not supported",
                )

    def _check_start(self, node: Node) -> None:
        container = self.nodes.get(node.scope or "")
        in_esp = container is not None and container.triggered
        if not in_esp:
            if node.event in ("error", "escalation"):
                kind = with_article(node.event)
                self.problem(node.id, f"{kind} startEvent is only for event sub-processes")
            return
        if node.event not in ESP_TRIGGERS:
            self.problem(
                node.id,
                "an event sub-process starts with a message, timer, signal, error"
                " or escalation start event",
            )
        elif node.event == "error" and not node.interrupting:
            self.problem(node.id, "an error start event is always interrupting")
        elif node.timer is not None and node.timer.kind == "cycle" and node.interrupting:
            self.problem(
                node.id, "a timer cycle needs a non-interrupting event sub-process start event"
            )
