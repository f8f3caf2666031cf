"""What the interpreter (interpreter.py) does at wait states (a mixin, no
I/O): a catch event's timer, message or signal wait opened for a token (an
event's own, an event-based gateway's, or a boundary event's host's), and the
event that came: a start event starts the execution, an event-based gateway
takes the flow of the event that came first, a boundary event interrupts its
host or not (a non-interrupting cycle arms itself again), any other wait moves
on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.workflows.expressions import (
    Cycle,
    ExpressionError,
    Recurrence,
    Scope,
    evaluate,
    parse_cycle,
    parse_date,
    parse_duration,
)
from services.workflows.graph import Graph, Node
from services.workflows.state import ExecutionState, Step, Subscription, TimerRow, Token

if TYPE_CHECKING:
    from services.workflows.expressions import Expression
    from services.workflows.interpreter_tasks import Locals


class WaitSteps:
    """The interpreter's wait states (a mixin of interpreter.Interpreter)."""

    graph: Graph
    state: ExecutionState
    step: Step
    now: datetime

    if TYPE_CHECKING:

        def _context(self, expression: Expression, local: Locals = None) -> Scope: ...
        def _incident(self, token: Token, message: str) -> None: ...
        def _merge(self, variables: dict[str, Any]) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take_all(self, node: Node, scope: int | None) -> None: ...
        def _leave(self, token: Token, node: Node) -> None: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _begin(self) -> None: ...
        def _subscribe_signal(self, token: Token, node: Node) -> None: ...
        def correlation_key(self, token: Token, node: Node) -> bool: ...
        def activation_locals(
            self, node: Node, scope: int | None, via: str | None
        ) -> tuple[bool, Locals]: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...
        def event_subprocess_fired(self, token: Token, node: Node, repeat: int | None) -> bool: ...

    def catch(self, node: Node, scope: int | None, via: str | None) -> None:
        """An intermediate catch event reached: its inputs are local variables
        its timer, correlation key, signal name and outputs see; then it waits."""
        activated, local = self.activation_locals(node, scope, via)
        if activated:
            self._arm_all(self._new_token(node, scope, via, local), [node])

    def _arm_all(self, token: Token, nodes: list[Node]) -> None:
        try:
            for node in nodes:
                self._arm(token, node)
        except ExpressionError as error:
            self._incident(token, str(error))

    def _arm(self, token: Token, node: Node) -> None:
        """Opens the wait of a catch event for `token` (the event's or its gateway's or host's)."""
        if node.event == "timer":
            self._arm_timer(token, node)
        elif node.event == "message":
            self._subscribe(token, node)
        elif node.event == "signal":
            self._subscribe_signal(token, node)

    def _arm_timer(self, token: Token, node: Node) -> None:
        timer = self.graph.timers[node.id]
        value: Any = timer.literal
        if timer.expression is not None:
            value = evaluate(timer.expression, self._context(timer.expression, token.variables))
        self.step.timers.append(self._timer_row(token.no, node.id, timer.kind, value))

    def _timer_row(self, token: int, element: str, kind: str, value: Any) -> TimerRow:
        if isinstance(value, timedelta):
            return TimerRow(token, element, self.now + value)
        if isinstance(value, datetime) and value.tzinfo is not None:
            return TimerRow(token, element, value)
        if not isinstance(value, str):
            raise ExpressionError(f"a {kind} timer needs a string, got {type(value).__name__}")
        if kind == "duration":
            return TimerRow(token, element, parse_duration(value).after(self.now))
        if kind == "date":
            return TimerRow(token, element, parse_date(value))
        cycle: Cycle = parse_cycle(value)
        first = cycle.start or cycle.interval.after(self.now)
        repeat = None if cycle.repetitions is None else cycle.repetitions - 1
        return TimerRow(token, element, first, repeat, cycle.interval)

    def _subscribe(self, token: Token, node: Node) -> None:
        assert node.message is not None
        if self.correlation_key(token, node):
            self.step.subscriptions.append(Subscription(token.no, node.id, node.message))

    def _event_fired(
        self,
        token: Token,
        node: Node,
        element: str,
        variables: dict[str, Any],
        repeat: int | None,
    ) -> None:
        """A timer or message of `element` came for `token` at `node`."""
        event = self.graph.nodes[element]
        self._merge(variables)
        if self.event_subprocess_fired(token, node, repeat):
            return
        if node.type == "startEvent":
            self._remove(token.no, record="completed")
            self._begin()
            self._take_all(node, None)
        elif node.type == "eventBasedGateway":
            self._remove(token.no, record="completed")
            self._history(event, "completed")
            self._take_all(event, token.scope)
        elif event.type == "boundaryEvent":
            self._boundary(token, event, repeat)
        else:
            self._leave(token, node)

    def _boundary(self, host: Token, event: Node, repeat: int | None) -> None:
        if event.interrupting:
            self._remove(host.no, record="terminated")
        elif event.event == "timer" and (repeat is None or repeat > 0):
            # A non-interrupting cycle fires again until its repetitions run out.
            try:
                interval = self._cycle_interval(event)
            except ExpressionError as error:
                self._incident(host, str(error))
                interval = None
            if interval is not None:
                left = None if repeat is None else repeat - 1
                due = interval.after(self.now)
                self.step.timers.append(TimerRow(host.no, event.id, due, left, interval))
        self._history(event, "completed")
        self._take_all(event, host.scope)

    def _cycle_interval(self, event: Node) -> Recurrence | None:
        timer = self.graph.timers[event.id]
        value: Any = timer.literal
        if timer.expression is not None:
            value = evaluate(timer.expression, self._context(timer.expression))
        return parse_cycle(value).interval if isinstance(value, str) else None
