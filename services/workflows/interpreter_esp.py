"""What the interpreter (interpreter.py) does for event sub-processes and
error end events (a mixin, no I/O).

- When a scope starts (the process, an embedded sub-process or one instance
  of a multi-instance one), each message, timer and signal event sub-process
  in it gets a listener token at its start event, in that scope: the
  subscription, timer or signal subscription is the listener's, so it is
  durable and goes with the scope. Listeners do not keep their scope alive:
  when nothing else is left in it, they are removed and the scope completes.
- Triggered, an interrupting event sub-process terminates every other token
  of its scope (listeners included), then runs; a non-interrupting one runs
  beside them and its listener stays (a timer listener stays while its cycle
  has repetitions left). The event's variables go to the execution, as a
  message's do. The scope waits for a running event sub-process to end.
- An error (a job's ThrowError, an error end event) is looked for from the
  thrower outwards: at each level, the error boundary events of the element,
  then the error event sub-processes inside it (the process's last); by code
  first, then one catching every code. An error event sub-process interrupts
  its scope. Uncaught: a job's error is its incident (jobs.py), an error end
  event's an incident on the end event; with a caller, the error is thrown
  again at its call activity, and if a caller catches it this execution is
  cancelled, its incident with it.
- An escalation looks, at each sub-process level outwards and then in the
  process, for a boundary event, then an escalation event sub-process.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from services.workflows.expressions import ExpressionError, Recurrence
from services.workflows.graph import Graph, Node
from services.workflows.state import ExecutionState, Step, TimerRow, Token
from services.workflows.token_index import TokenIndex

if TYPE_CHECKING:
    from datetime import datetime

    from services.workflows.interpreter_tasks import Locals

# Event sub-processes that wait through a listener token.
LISTENED = frozenset({"message", "timer", "signal"})


class EspIndex:
    """A graph's event sub-processes, by the element they are in (None: the process)."""

    def __init__(self, graph: Graph) -> None:
        self.starts: dict[str | None, list[Node]] = {}
        self.start_ids: set[str] = set()
        for node in graph.nodes.values():
            if node.type == "subProcess" and node.triggered and node.start is not None:
                start = graph.nodes[node.start]
                self.starts.setdefault(node.scope, []).append(start)
                self.start_ids.add(start.id)


def esp_index(graph: Graph) -> EspIndex:
    found: EspIndex | None = graph.__dict__.get("_esp_index")
    if found is None:
        found = graph.__dict__["_esp_index"] = EspIndex(graph)
    return found


class EspSteps:
    """The interpreter's event sub-process steps (a mixin of interpreter.Interpreter)."""

    graph: Graph
    state: ExecutionState
    step: Step
    now: datetime
    _queue: deque[tuple[str, int | None, str | None]]
    _pending: dict[int | None, int]
    index: TokenIndex

    if TYPE_CHECKING:

        def _incident(self, token: Token, message: str) -> None: ...
        def error_to_caller(self, code: str, message: str) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take_all(self, node: Node, scope: int | None) -> None: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _arm(self, token: Token, node: Node) -> None: ...
        def _is_instance(self, token: Token) -> bool: ...
        def _cycle_interval(self, event: Node) -> Recurrence | None: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    # ------------------------------------------------------------ listeners

    def open_event_subprocesses(self, scope: Token | None) -> None:
        """A scope started: its message, timer and signal event sub-processes listen."""
        container = None if scope is None else scope.element
        for start in esp_index(self.graph).starts.get(container, ()):
            if start.event not in LISTENED:
                continue
            self.listen_again(start, None if scope is None else scope.no)

    def listen_again(self, start: Node, scope: int | None) -> bool:
        """A listener of `start` waits in `scope` (when the scope starts, and
        again when its incident is resolved); False when `start` is no event
        sub-process's start event."""
        if start.id not in esp_index(self.graph).start_ids:
            return False
        listener = self._new_token(start, scope)
        try:
            self._arm(listener, start)
        except ExpressionError as error:
            self._incident(listener, str(error))
        return True

    def is_listener(self, token: Token) -> bool:
        return token.element in esp_index(self.graph).start_ids

    def only_listeners_left(self, scope: int | None) -> bool:
        """Whether nothing but listeners is left in `scope` (none at all included);
        the listeners are then closed."""
        starts = esp_index(self.graph).start_ids
        if not starts:
            return False
        # Few listeners, maybe many tokens (a multi-instance body): count, don't scan.
        listeners = [t.no for t in self.index.at_any(starts) if t.scope == scope]
        if not listeners or len(self.index.children(scope)) != len(listeners):
            return False
        for no in listeners:
            self._remove(no, record=None)
        return True

    def event_subprocess_fired(self, listener: Token, start: Node, repeat: int | None) -> bool:
        """A listener's event came (its variables merged already); False when
        `start` is not an event sub-process's start event."""
        if not self.is_listener(listener):
            return False
        scope = listener.scope
        if start.interrupting:
            self._interrupt(scope)
        elif not self._rearmed(listener, start, repeat):
            self._remove(listener.no, record=None)
        self._run_esp(start, scope)
        return True

    def _rearmed(self, listener: Token, start: Node, repeat: int | None) -> bool:
        """Whether a non-interrupting listener waits on: a message or signal
        listener does; a timer one while its cycle has repetitions left."""
        if start.event != "timer":
            return True
        if start.timer is None or start.timer.kind != "cycle" or repeat == 0:
            return False
        try:
            interval = self._cycle_interval(start)
        except ExpressionError as error:
            self._incident(listener, str(error))
            return True
        if interval is None:
            return False
        left = None if repeat is None else repeat - 1
        due = interval.after(self.now)
        self.step.timers.append(TimerRow(listener.no, start.id, due, left, interval))
        return True

    # ------------------------------------------------------------ running one

    def _interrupt(self, scope: int | None) -> None:
        for no in self.index.children(scope):
            token = self.state.tokens.get(no)
            if token is not None:
                self._remove(no, record=None if self.is_listener(token) else "terminated")
        self._queue = deque(item for item in self._queue if item[1] != scope)
        self._pending[scope] = 0

    def _run_esp(self, start: Node, scope: int | None) -> None:
        assert start.scope is not None
        esp = self.graph.nodes[start.scope]
        token = self._new_token(esp, scope)
        self._history(esp, "activated")
        self._history(start, "completed")
        self._take_all(start, token.no)

    # ------------------------------------------------------------ errors and escalations

    def catch_error(self, thrower: Token, code: str) -> bool:
        """Looks for what catches error `code` from `thrower` outwards; True when caught."""
        current: Token | None = thrower
        while current is not None:
            host = self.graph.nodes[current.element]
            boundaries = [] if self._is_instance(current) else host.boundaries
            caught = self._catching(boundaries, self._esps_in(current), "error", code)
            if caught is not None:
                self._caught(caught, current, interrupting=True)
                return True
            current = self.state.tokens.get(current.scope) if current.scope is not None else None
        caught = self._catching([], self._esps_in(None), "error", code)
        if caught is None:
            return False
        self._caught(caught, None, interrupting=True)
        return True

    def escalation_subprocess(self, scope: Token | None, code: str) -> tuple[bool, bool]:
        """An escalation event sub-process in `scope` (None: the process)
        catching `code`: (caught, interrupting); it runs."""
        caught = self._catching([], self._esps_in(scope), "escalation", code)
        if caught is None:
            return False, False
        self._caught(caught, scope, interrupting=caught.interrupting)
        return True, caught.interrupting

    def _esps_in(self, token: Token | None) -> list[Node]:
        """The error and escalation start events of the event sub-processes
        of `token`'s scope (a sub-process, not a multi-instance body)."""
        if token is None:
            return esp_index(self.graph).starts.get(None, [])
        node = self.graph.nodes[token.element]
        if node.type != "subProcess" or (node.multi is not None and not self._is_instance(token)):
            return []
        return esp_index(self.graph).starts.get(node.id, [])

    def _catching(
        self, boundaries: list[str], starts: list[Node], kind: str, code: str
    ) -> Node | None:
        candidates = [self.graph.nodes[b] for b in boundaries] + starts
        code_field = "error_code" if kind == "error" else "escalation_code"
        matching = [n for n in candidates if n.event == kind]
        for node in matching:
            if getattr(node, code_field) == code:
                return node
        for node in matching:
            if getattr(node, code_field) is None:
                return node
        return None

    def _caught(self, event: Node, at: Token | None, *, interrupting: bool) -> None:
        """`event` (a boundary event of `at`'s element, or an event
        sub-process's start event in `at`'s scope) caught what was thrown."""
        if event.type == "boundaryEvent":
            assert at is not None
            self._remove(at.no, record="terminated")
            self._history(event, "completed")
            self._take_all(event, at.scope)
            return
        scope = None if at is None else at.no
        if interrupting:
            self._interrupt(scope)
        self._run_esp(event, scope)

    def throw_error_end(self, node: Node, scope: int | None, via: str | None) -> None:
        """An error end event reached: it throws its code from its scope."""
        token = self._new_token(node, scope, via)
        self._history(node, "activated")
        assert node.error_code is not None
        if not self.catch_error(token, node.error_code):
            self._incident(
                token, f"error {node.error_code!r} thrown by the end event and not caught"
            )
            self.error_to_caller(node.error_code, "")
