"""The event part of the BPMN parser (bpmn.py): signal, escalation and link
events, a message's `zeebe:subscription correlationKey`, and a call
activity's `zeebe:calledElement` (workflow id or BPMN process id,
`propagateAllChildVariables`), read and checked when the workflow is saved.

- Signals (`bpmn:signal name`): start, intermediate catch and throw, boundary
  (interrupting or not) and end events. The name is static, or `=expr`
  evaluated when the event is reached (not on a start event).
- Escalations (`bpmn:escalation escalationCode`): intermediate throw and end
  events throw the code; boundary events on sub-processes and call activities
  catch it, by code or all of them (no escalation reference).
- Links: an intermediate throw link event jumps to the intermediate catch link
  event of the same name in the same scope; a throw with no catch, and two
  catches of one name in a scope, are refused.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any
from xml.etree.ElementTree import Element as XmlElement

from services.workflows.bpmn_tasks import BPMN, ZEEBE, extension, local_name
from services.workflows.expressions import ExpressionError, compile_expression, strip_marker
from services.workflows.graph import Node

# The events each element may throw or catch besides those of bpmn.py.
THROWING = frozenset({"intermediateThrowEvent", "endEvent"})
ESCALATION_HOSTS = frozenset({"subProcess", "callActivity"})
MAX_NAME = 255


class EventDefinitions:
    """The document's signals, escalations and messages' correlation keys, by id."""

    def __init__(self, root: XmlElement) -> None:
        self.signals: dict[str, str] = {}
        self.escalations: dict[str, str] = {}
        self.correlation_keys: dict[str, str] = {}
        for child in root:
            namespace, name = local_name(child.tag)
            if namespace != BPMN:
                continue
            element_id = child.get("id", "")
            if name == "signal":
                self.signals[element_id] = (child.get("name") or "").strip()
            elif name == "escalation":
                self.escalations[element_id] = (child.get("escalationCode") or "").strip()
            elif name == "message":
                for subscription in extension(child, ZEEBE, "subscription"):
                    key = (subscription.get("correlationKey") or "").strip()
                    if key:
                        self.correlation_keys[element_id] = key


class EventParser:
    """Reads signal, escalation and link events and call activities; the
    builder (bpmn._Builder) collects the problems and expressions."""

    expressions: list[tuple[str, str]]
    definitions: EventDefinitions

    def problem(self, element_id: str, message: str) -> None:
        raise NotImplementedError

    def event_fields(
        self,
        element: XmlElement,
        name: str,
        element_id: str,
        event: str | None,
        definition: XmlElement | None,
        *,
        in_esp: bool = False,
    ) -> dict[str, Any]:
        """`in_esp`: the start event of an event sub-process (bpmn_esp.py)."""
        fields: dict[str, Any] = {}
        if definition is not None and event == "signal":
            fields["signal"] = self._signal(definition, name, element_id)
        elif definition is not None and event == "escalation":
            catch = name == "boundaryEvent" or in_esp
            fields["escalation_code"] = self._escalation(definition, catch, element_id)
        elif definition is not None and event == "link":
            link = (definition.get("name") or "").strip()
            if not link:
                self.problem(element_id, "a link event needs a name (linkEventDefinition name)")
            fields["link"] = link or None
        if (event == "message" and name not in THROWING) or name == "receiveTask":
            source = definition if definition is not None else element
            key = self.definitions.correlation_keys.get(source.get("messageRef") or "")
            if key is not None and (name != "startEvent" or in_esp):
                self._dynamic(element_id, key, "a correlation key")
                fields["correlation_key"] = key
        return fields

    def _signal(self, definition: XmlElement, name: str, element_id: str) -> str | None:
        signal = self.definitions.signals.get(definition.get("signalRef") or "")
        if not signal:
            self.problem(element_id, "needs a signalRef to a bpmn:signal with a name")
            return None
        if signal.startswith("="):
            if name == "startEvent":
                self.problem(element_id, "a signal start event needs a static signal name")
                return None
            self._dynamic(element_id, signal, "a signal name")
        elif len(signal) > MAX_NAME:
            self.problem(element_id, f"the signal name is longer than {MAX_NAME} characters")
        return signal

    def _dynamic(self, element_id: str, value: str, what: str) -> None:
        """An expression to compile; it may not read `user` (not fetched for it)."""
        if not value.startswith("="):
            return
        self.expressions.append((element_id, value))
        try:
            if compile_expression(value).uses_user:
                self.problem(element_id, f"{what} cannot read user")
        except ExpressionError:
            pass  # reported with the other expressions

    def _escalation(self, definition: XmlElement, catch: bool, element_id: str) -> str | None:
        ref = definition.get("escalationRef")
        code = self.definitions.escalations.get(ref or "")
        if catch and not ref:
            return None  # catches every escalation
        if not code:
            self.problem(
                element_id, "needs an escalationRef to a bpmn:escalation with an escalationCode"
            )
            return None
        if code.startswith("="):
            self.problem(element_id, "the escalationCode must be static, not an expression")
            return None
        return code

    def called_fields(self, element: XmlElement, element_id: str) -> dict[str, Any]:
        """A call activity's workflow id, or BPMN process id, and propagation."""
        called = element.get("calledElement")
        flags = {"propagateAllChildVariables": "true", "propagateAllParentVariables": "true"}
        for definition in extension(element, ZEEBE, "calledElement"):
            called = definition.get("processId") or called
            for flag, given in flags.items():
                flags[flag] = definition.get(flag) or given
        for flag, given in flags.items():
            if given not in ("true", "false"):
                self.problem(element_id, f"{flag} must be true or false")
        value = strip_marker(called or "").strip()
        fields: dict[str, Any] = {
            "propagate_all": flags["propagateAllChildVariables"] != "false",
            "propagate_parent": flags["propagateAllParentVariables"] != "false",
        }
        try:
            fields["called"] = str(uuid.UUID(value))
        except ValueError:
            if not value or len(value) > MAX_NAME or (called or "").strip().startswith("="):
                self.problem(
                    element_id,
                    "a call activity must name the workflow id (a UUID) or the BPMN process"
                    " id it calls, statically",
                )
            else:
                fields["called_process"] = value
        return fields

    def check_events(self, nodes: dict[str, Node]) -> None:
        """Links resolve in their scope; escalation boundaries are on sub-processes
        and call activities, one per code."""
        catches: dict[tuple[str | None, str], list[str]] = defaultdict(list)
        for node in nodes.values():
            if node.type == "intermediateCatchEvent" and node.event == "link" and node.link:
                catches[(node.scope, node.link)].append(node.id)
        for (_, link), found in catches.items():
            for duplicate in found[1:]:
                self.problem(
                    duplicate, f"another link catch event in its scope has the name {link!r}"
                )
        codes: dict[str, set[str | None]] = defaultdict(set)
        for node in nodes.values():
            throws_link = node.type == "intermediateThrowEvent" and node.event == "link"
            if throws_link and node.link and (node.scope, node.link) not in catches:
                self.problem(
                    node.id, f"no link catch event in its scope has the name {node.link!r}"
                )
            if node.type == "boundaryEvent" and node.event == "escalation":
                host = nodes.get(node.attached_to or "")
                if host is not None and host.type not in ESCALATION_HOSTS:
                    self.problem(
                        node.id,
                        "an escalation boundary event must be on a sub-process or call activity",
                    )
                elif host is not None:
                    if node.escalation_code in codes[host.id]:
                        what = node.escalation_code or "every escalation"
                        self.problem(
                            node.id, f"another boundary event of {host.id!r} catches {what!r}"
                        )
                    codes[host.id].add(node.escalation_code)


def link_target(nodes: dict[str, Node], throw: Node) -> str | None:
    """The catch link event a throw link event jumps to."""
    for node in nodes.values():
        if (
            node.type == "intermediateCatchEvent"
            and node.event == "link"
            and node.scope == throw.scope
            and node.link == throw.link
        ):
            return node.id
    return None
