"""What the interpreter (interpreter.py) does for signal, escalation and link
events, correlation keys and call activities' variables (a mixin, no I/O).

- A link throw event jumps to the catch link event of its name in its scope,
  which passes straight through.
- A message throw or end event is a job, as a send task is (as in Zeebe; or
  the built-in lifecycle.publish_message, whose message the stepper publishes
  in the same step: stepper_messages.py).
- A signal catch or boundary event subscribes its token to the signal's name
  (evaluated when reached); a signal delivered to it is a MessageDelivered
  trigger, as a message is. A signal throw or end event records the name: the
  stepper broadcasts it in the same step (stepper_events.py).
- An escalation throw or end event looks for an escalation boundary event on
  the sub-processes around it, then (through the stepper) on the call activity
  of the parent execution, and on up: by code, else one catching every
  escalation. Interrupting: the scope it caught it on ends there. Otherwise,
  or when nothing catches it, the throw event completes (not an incident).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from services.workflows.expressions import (
    Expression,
    ExpressionError,
    Scope,
    evaluate,
    load_expression,
)
from services.workflows.graph import Graph, Node
from services.workflows.publish_rules import ThrownMessage
from services.workflows.state import ExecutionState, MessageDelivered, Step, Token

if TYPE_CHECKING:
    from services.workflows.interpreter_tasks import Locals

# The event kinds this module handles when their element is reached.
OWN_EVENTS = frozenset({"signal", "escalation", "link", "message"})
THROWING = frozenset({"intermediateThrowEvent", "endEvent"})
MAX_KEY = 255


class SignalSubscription(NamedTuple):
    """A token waits for a signal of this name at `element`."""

    token: int
    element: str
    name: str


class EscalationNotice(NamedTuple):
    """An escalation nothing in this execution caught, for its caller."""

    code: str
    element: str


class ErrorNotice(NamedTuple):
    """An error nothing in this execution caught, for its caller to catch."""

    code: str
    message: str


@dataclass
class EventOutcome:
    """What a step did with events, for the stepper: subscriptions to write,
    signals to broadcast, messages to publish and escalations for the parent
    (taken by the follow-ups)."""

    signal_subscriptions: list[SignalSubscription] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    messages: list[ThrownMessage] = field(default_factory=list)
    escalations: list[EscalationNotice] = field(default_factory=list)
    errors: list[ErrorNotice] = field(default_factory=list)
    # Message subscriptions' correlation keys, by (token, element).
    correlation_keys: dict[tuple[int, str], str] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Expression:
    return load_expression(source)


def static_or_evaluated(node: Node, value: str, what: str, scope: Scope | None) -> str:
    """A name or key: the static value, or the expression's string value."""
    if not value.startswith("="):
        return value
    assert scope is not None
    result = evaluate(_compiled(value), scope)
    if isinstance(result, bool) or not isinstance(result, (str, int)):
        raise ExpressionError(
            f"{what} {value!r} of {node.id!r} must give a string, not {type(result).__name__}"
        )
    text = str(result)
    if not text or len(text) > MAX_KEY:
        raise ExpressionError(f"{what} {value!r} of {node.id!r} gave {text!r}: 1 to 255 characters")
    return text


class EventSteps:
    """The interpreter's event steps (a mixin of interpreter.Interpreter)."""

    graph: Graph
    state: ExecutionState
    step: Step

    if TYPE_CHECKING:

        def _context(self, expression: Expression, local: Locals = None) -> Scope: ...
        def _merge_produced(self, node: Node, variables: dict[str, Any], what: str) -> None: ...
        def _leave(self, token: Token, node: Node) -> None: ...
        def _incident(self, token: Token, message: str) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take_all(self, node: Node, scope: int | None) -> None: ...
        def _pass(self, node: Node, scope: int | None) -> None: ...
        def escalation_subprocess(self, scope: Token | None, code: str) -> tuple[bool, bool]: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _activity(self, node: Node, scope: int | None, via: str | None) -> None: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    @property
    def events(self) -> EventOutcome:
        found: EventOutcome | None = self.__dict__.get("_events")
        if found is None:
            found = self.__dict__["_events"] = EventOutcome()
        return found

    def _evaluated(self, node: Node, value: str, what: str, local: Locals = None) -> str:
        scope = self._context(_compiled(value), local) if value.startswith("=") else None
        return static_or_evaluated(node, value, what, scope)

    # ------------------------------------------------------------ reaching an event

    def _event_activated(self, node: Node, scope: int | None, via: str | None) -> bool:
        """A signal, escalation, link or message event reached; True when it is
        done with (a link, a message thrown, an escalation that interrupted its
        scope, an incident), False
        when the element goes on as a none event of its kind."""
        if node.event == "link":
            if node.type == "intermediateThrowEvent":
                self._history(node, "completed")
                self._pass(self.graph.nodes[self._link_target(node)], scope)
                return True
            self._pass(node, scope)
            return True
        if node.type not in THROWING:
            return False
        if node.event == "message":
            self._activity(node, scope, via)  # a job, or lifecycle.publish_message
            return True
        if node.event == "signal":
            assert node.signal is not None
            try:
                self.events.signals.append(self._evaluated(node, node.signal, "signal name"))
            except ExpressionError as error:
                self._incident(self._new_token(node, scope, via), str(error))
                return True
            return False
        assert node.escalation_code is not None
        current = self.state.tokens.get(scope) if scope is not None else None
        if self._escalate(current, node.escalation_code, node.id):
            self._history(node, "terminated")
            return True
        return False

    def _link_target(self, throw: Node) -> str:
        links: dict[tuple[str | None, str | None], str] | None = self.__dict__.get("_links")
        if links is None:
            links = self.__dict__["_links"] = {
                (n.scope, n.link): n.id
                for n in self.graph.nodes.values()
                if n.type == "intermediateCatchEvent" and n.event == "link"
            }
        return links[(throw.scope, throw.link)]

    # ------------------------------------------------------------ waits

    def _subscribe_signal(self, token: Token, node: Node) -> None:
        assert node.signal is not None
        name = self._evaluated(node, node.signal, "signal name", token.variables)
        self.events.signal_subscriptions.append(SignalSubscription(token.no, node.id, name))

    def delivered(self, trigger: MessageDelivered) -> dict[str, Any]:
        """The variables a message (or signal) brings, to merge: a thrown
        message's are merged here, at its catch element, as an output mapping's
        would be (too large fails this execution there, not the thrower's step)."""
        if not trigger.thrown:
            return trigger.variables
        what = "the variables of the message"
        self._merge_produced(self.graph.nodes[trigger.element], trigger.variables, what)
        return {}

    def correlation_key(self, token: Token, node: Node) -> bool:
        """Evaluates a message catch's correlation key for its subscription;
        False (and an incident on the token) when it fails."""
        if node.correlation_key is None:
            return True
        try:
            key = self._evaluated(node, node.correlation_key, "correlation key", token.variables)
        except ExpressionError as error:
            self._incident(token, str(error))
            return False
        self.events.correlation_keys[(token.no, node.id)] = key
        return True

    # ------------------------------------------------------------ escalations

    def _escalate(self, current: Token | None, code: str, element: str) -> bool:
        """Looks for the boundary event that catches `code` from `current` (a
        sub-process or call activity token) outwards; True when an interrupting
        one caught it. Uncaught, it goes to the caller, if any."""
        while current is not None:
            host = self.graph.nodes[current.element]
            boundary = self._escalation_boundary(host, code)
            if boundary is not None:
                if boundary.interrupting:
                    self._remove(current.no, record="terminated")
                self._history(boundary, "completed")
                self._take_all(boundary, current.scope)
                return boundary.interrupting
            caught, interrupting = self.escalation_subprocess(current, code)
            if caught:
                return interrupting
            current = self.state.tokens.get(current.scope) if current.scope is not None else None
        caught, interrupting = self.escalation_subprocess(None, code)
        if caught:
            return interrupting
        if self.state.parent is not None:
            self.events.escalations.append(EscalationNotice(code, element))
        return False

    def _escalation_boundary(self, host: Node, code: str) -> Node | None:
        catch_all = None
        for boundary_id in host.boundaries:
            boundary = self.graph.nodes[boundary_id]
            if boundary.event != "escalation":
                continue
            if boundary.escalation_code == code:
                return boundary
            if boundary.escalation_code is None:
                catch_all = boundary
        return catch_all

    def error_to_caller(self, code: str, message: str) -> None:
        """An error uncaught here goes to the caller's call activity, if any: caught
        there (or further up), this execution is cancelled with its incident."""
        if self.state.parent is not None:
            self.events.errors.append(ErrorNotice(code, message))

    def escalated_by_child(self, token: Token, code: str) -> None:
        """An escalation a called execution did not catch, at its call activity."""
        self._escalate(token, code, token.element)

    # ------------------------------------------------------------ call activities

    def _child_completed(self, token: Token, node: Node, variables: dict[str, Any]) -> None:
        """Zeebe's propagateAllChildVariables: all the child's variables reach
        the parent, or (false) only what the output mappings make of them."""
        if node.propagate_all:
            self._merge_produced(node, variables, "the called execution's variables")
        else:
            token.variables = {**(token.variables or {}), **variables}
        self._leave(token, node)
