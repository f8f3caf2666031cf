"""What the interpreter (interpreter.py) does for compensation (a mixin, no
I/O; docs/workflows.md, "Compensation"):

- An activity with a compensation boundary event that completes is recorded
  in the execution's compensation log (compensation_log.py) with the scope
  tokens it completed in; each completion once (a loop, a multi-instance
  activity's instances).
- A compensation intermediate throw or end event claims the records a throw
  in its scope reaches (in an event sub-process: the scope the event
  sub-process is in), those of its `activityRef` only when it names one, and
  waits at a token while their handlers run one after the other, the latest
  completion first. Each handler is a token inside the throw event's token,
  so whatever ends the throw event ends its handler. A handler done drops its
  record (it never runs again) and starts the next; the last one done, the
  throw event goes on, or the end event completes its scope. With nothing to
  compensate it passes straight through.
- A scope terminated drops what completed in it; an ended execution's records
  are deleted with its step (store/compensations.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from services.workflows.compensation_log import Compensable, ScopeRef
from services.workflows.graph import Graph, Node
from services.workflows.state import ExecutionState, Step, Token

if TYPE_CHECKING:
    from services.workflows.interpreter_tasks import Locals


def handlers(graph: Graph) -> dict[str, str]:
    """Each activity with a compensation boundary event, to its handler."""
    found: dict[str, str] | None = graph.__dict__.get("_compensation_handlers")
    if found is None:
        found = graph.__dict__["_compensation_handlers"] = {
            node.attached_to: node.handler
            for node in graph.nodes.values()
            if node.handler is not None and node.attached_to is not None
        }
    return found


class CompensationSteps:
    """The interpreter's compensation steps (a mixin of interpreter.Interpreter)."""

    graph: Graph
    state: ExecutionState
    step: Step
    now: datetime

    if TYPE_CHECKING:

        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _pass(self, node: Node, scope: int | None) -> None: ...
        def _leave(self, token: Token, node: Node) -> None: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _scope_may_end(self, scope: int | None) -> None: ...
        def _enqueue(self, element: str, scope: int | None, via: str | None) -> None: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    # ------------------------------------------------------------ completions

    def compensation_left(self, node: Node, scope: int | None) -> bool:
        """`node` completed in `scope` (its token left, or it was done at once):
        recorded when it has a compensation boundary event. True when it was a
        compensation handler: its throw event goes on."""
        if node.id in handlers(self.graph):
            self.state.compensations.add(node.id, self._scopes_of(scope), self.now)
        if not node.for_compensation or scope is None:
            return False
        thrower = self.state.tokens[scope]
        record = self.state.compensations.running(thrower.no)
        if record is not None:
            self.state.compensations.drop(record.seq)
        self._next_handler(thrower)
        return True

    def scope_terminated(self, no: int) -> None:
        """Token `no` was terminated: what completed inside it is not compensable."""
        self.state.compensations.drop_scope(no)

    def _scopes_of(self, scope: int | None) -> tuple[ScopeRef, ...]:
        found: list[ScopeRef] = []
        while scope is not None:
            token = self.state.tokens[scope]
            found.append((token.no, token.element))
            scope = token.scope
        return tuple(found)

    # ------------------------------------------------------------ throwing

    def compensation_thrown(self, node: Node, scope: int | None, via: str | None) -> bool:
        """A compensation intermediate throw or end event reached; False for any other element."""
        if node.event != "compensation" or node.type == "boundaryEvent":
            return False
        self._throw_compensation(node, scope, via)
        return True

    def _throw_compensation(self, node: Node, scope: int | None, via: str | None) -> None:
        log, compensated = self.state.compensations, self._compensated_scope(scope)
        claimed = [
            r for r in log.records.values() if self._reached(r, compensated, node.activity_ref)
        ]
        if not claimed:
            if node.type == "endEvent":
                self._history(node, "completed")
                self._scope_may_end(scope)
            else:
                self._pass(node, scope)
            return
        token = self._new_token(node, scope, via)
        self._history(node, "activated")
        for record in claimed:
            log.claim(record, token.no)
        self._next_handler(token)

    def _reached(self, record: Compensable, scope: int | None, activity: str | None) -> bool:
        """Whether compensating `scope` undoes `record` (not claimed by a throw
        still running; of `activity`, or a sub-process of that id, if given)."""
        tokens = self.state.tokens
        if record.thrower is not None and record.thrower in tokens:
            return False
        between = record.path_from(scope, tokens)
        if between is None:
            return False
        return activity is None or (between[-1][1] if between else record.element) == activity

    def _compensated_scope(self, scope: int | None) -> int | None:
        """What a throw in `scope` compensates: in an event sub-process, the
        scope the event sub-process is in."""
        token = self.state.tokens.get(scope) if scope is not None else None
        if token is not None and self.graph.nodes[token.element].triggered:
            return token.scope
        return scope

    def _next_handler(self, thrower: Token) -> None:
        """Runs the handler of the latest completion `thrower` claimed, or, all
        compensated, completes the throw event."""
        record = self.state.compensations.running(thrower.no)
        if record is not None:
            self._enqueue(handlers(self.graph)[record.element], thrower.no, None)
            return
        node = self.graph.nodes[thrower.element]
        if node.type == "endEvent":
            self._remove(thrower.no, record="completed")
            self._scope_may_end(thrower.scope)
        else:
            self._leave(thrower, node)
