"""Multi-instance activities (a mixin of interpreter.Interpreter), as Zeebe 8
runs them, with every instance a token in PostgreSQL like any other.

- The **body** is a token at the activity, in the activity's scope; its local
  variables keep the input collection as it was when the body was activated
  (`{"items": [...]}`). The activity's boundary events are armed on the body:
  an interrupting one ends every instance.
- Each **instance** is a token at the same activity inside the body, arrived
  by `#<loopCounter>`; its local variables are `loopCounter` (from 1), the
  input element, and the output element when it names a variable (null at
  first, so that what its job gives back under that name stays in it).
  Elements inside a multi-instance sub-process see them (and a job inside
  one, or a called execution, gets the input element and the counter).
- An instance that completes leaves a **marker** token in the body, arrived by
  `=<loopCounter>`, holding its output element: the body's bookkeeping is
  only inserted and deleted rows, so a step is committed whole or not at all
  and a restart resumes exactly where the last step left it.
- After each instance the completion condition is evaluated (with
  numberOfInstances, numberOfCompletedInstances, numberOfActiveInstances);
  true, or every instance done, ends the body: the others are terminated, the
  output collection (input order, null for an instance that did not complete)
  is set in the process and the activity's outgoing flows are taken.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.workflows.cel_rules import kind_of
from services.workflows.expressions import (
    Expression,
    ExpressionError,
    Scope,
    evaluate,
    evaluate_bool,
    plain,
)
from services.workflows.graph import Graph, Node
from services.workflows.multi_spec import LOOP_COUNTER, MAX_INSTANCES, MultiInstance
from services.workflows.state import ExecutionState, HistoryRow, Step, Token
from services.workflows.token_index import MARKER, TokenIndex

# How an instance token arrived (`#3`), and a completed instance's marker (`=3`).
INSTANCE = "#"
Locals = dict[str, Any] | None


def instance_locals(spec: MultiInstance, items: list[Any], counter: int) -> dict[str, Any]:
    """The local variables of instance `counter` (from 1)."""
    local: dict[str, Any] = {LOOP_COUNTER: counter}
    if spec.input_element:
        local[spec.input_element] = items[counter - 1]
    if (name := spec.output_variable) is not None:
        local[name] = None
    return local


def collected(count: int, markers: list[Token]) -> list[Any]:
    """The output collection: each marker's output element at its instance's place."""
    outputs: list[Any] = [None] * count
    for marker in markers:
        index = int((marker.via or "=0")[1:]) - 1
        if 0 <= index < count and marker.variables:
            outputs[index] = marker.variables.get("output")
    return outputs


def is_marker(token: Token) -> bool:
    return (token.via or "").startswith(MARKER)


class MultiSteps:
    """The interpreter's multi-instance steps."""

    graph: Graph
    state: ExecutionState
    step: Step
    _at: int | None
    _activations: int
    index: TokenIndex

    if TYPE_CHECKING:
        now: datetime

        def _context(self, expression: Expression, local: Locals = None) -> Scope: ...
        def _incident(self, token: Token, message: str) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take_all(self, node: Node, scope: int | None) -> None: ...
        def _enqueue(self, element: str, scope: int | None, via: str | None) -> None: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _arm(self, token: Token, node: Node) -> None: ...
        def _merge_produced(self, node: Node, variables: dict[str, Any], what: str) -> None: ...
        def compensation_left(self, node: Node, scope: int | None) -> bool: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    # ------------------------------------------------------------ where a token is

    def _is_body(self, scope: int | None, element: str) -> bool:
        """Whether `scope` is the multi-instance body of `element`."""
        if scope is None:
            return False
        body = self.state.tokens.get(scope)
        return body is not None and body.element == element

    def _is_instance(self, token: Token) -> bool:
        return (token.via or "").startswith(INSTANCE) and self._is_body(token.scope, token.element)

    def _multi_body(self, node: Node, scope: int | None) -> bool:
        """Whether activating `node` in `scope` starts its multi-instance body
        (rather than one of its instances)."""
        return node.multi is not None and not self._is_body(scope, node.id)

    # ------------------------------------------------------------ the body

    def _activate_body(self, node: Node, scope: int | None, via: str | None) -> None:
        spec = self.graph.multi[node.id]
        multi = node.multi
        assert multi is not None
        try:
            items = plain(evaluate(spec.collection, self._context(spec.collection)))
        except ExpressionError as error:
            message = f"the inputCollection of {node.id!r}: {error}"
            self._incident(self._new_token(node, scope, via), message)
            return
        if not isinstance(items, list):
            message = f"the inputCollection of {node.id!r} gave {kind_of(items)}, not a list"
            self._incident(self._new_token(node, scope, via), message)
            return
        if len(items) > MAX_INSTANCES:
            message = (
                f"the inputCollection of {node.id!r} has {len(items):,} elements, more than"
                f" the limit of {MAX_INSTANCES:,} instances of a multi-instance activity"
            )
            self._incident(self._new_token(node, scope, via), message)
            return
        if not items:
            # Nothing to do: the body completes at once, its output collection empty.
            self._record(node, "activated")
            self._end_body(node, scope, [])
            return
        body = self._new_token(node, scope, via, {"items": items})
        try:
            for boundary_id in node.boundaries:
                boundary = self.graph.nodes[boundary_id]
                if boundary.event in ("timer", "message"):
                    self._arm(body, boundary)
        except ExpressionError as error:
            self._incident(body, str(error))
            return
        self._record(node, "activated")
        for counter in range(1, 2 if multi.sequential else len(items) + 1):
            self._enqueue(node.id, body.no, f"{INSTANCE}{counter}")

    def _instance_seed(self, node: Node, scope: int | None, via: str | None) -> Locals:
        """The local variables an activation of `node` in `scope` starts with: an
        instance's, or, inside a multi-instance sub-process, the input element and
        counter its job or called execution should see; None for none."""
        if not self.graph.scoped_locals:
            return None
        seed: dict[str, Any] = {}
        if node.task is not None or node.type in ("userTask", "callActivity"):
            seed.update(self._enclosing(scope, visible_only=True))
        if node.multi is not None and (via or "").startswith(INSTANCE) and scope is not None:
            # An instance, not a step of the loop: MAX_ACTIVATIONS bounds loops,
            # MAX_INSTANCES the instances.
            self._activations -= 1
            items = (self.state.tokens[scope].variables or {}).get("items", [])
            seed.update(instance_locals(node.multi, items, int((via or "#1")[1:])))
        return seed or None

    def _enclosing(self, at: int | None, *, visible_only: bool = False) -> dict[str, Any]:
        """The local variables of the instances enclosing token `at` (the nearest winning)."""
        found: list[dict[str, Any]] = []
        token = self.state.tokens.get(at) if at is not None else None
        while token is not None:
            if token.variables and self._has_locals(token):
                local = token.variables
                multi = self.graph.nodes[token.element].multi
                if visible_only and multi is not None:
                    names = {LOOP_COUNTER, multi.input_element, *self._input_names(token)}
                    local = {k: v for k, v in local.items() if k in names}
                found.append(local)
            token = self.state.tokens.get(token.scope) if token.scope is not None else None
        merged: dict[str, Any] = {}
        for local in reversed(found):
            merged.update(local)
        return merged

    def _has_locals(self, scope: Token) -> bool:
        """Whether the scope token's variables are seen inside it: a
        multi-instance instance's, a sub-process's (its inputs), not a body's."""
        if self._is_instance(scope):
            return True
        node = self.graph.nodes[scope.element]
        return node.type == "subProcess" and node.multi is None

    def _input_names(self, token: Token) -> set[str]:
        return {target for target, _ in self.graph.inputs.get(token.element, ())}

    def _visible(self, local: Locals) -> Locals:
        """An expression's local variables: the element's over those of the
        scopes (multi-instance instances, sub-processes) it runs in."""
        if not self.graph.scoped_locals:
            return local
        enclosing = self._enclosing(self._at)
        if not enclosing:
            return local
        return {**enclosing, **local} if local else enclosing

    # ------------------------------------------------------------ an instance ends

    def _instance_left(self, token: Token, node: Node) -> bool:
        """Called when `token` left `node`: True when it was an instance (the
        body decides what comes next), False to take the outgoing flows."""
        if node.multi is None or not (token.via or "").startswith(INSTANCE):
            return False
        if not self._is_body(token.scope, node.id):
            return False
        assert token.scope is not None
        self._instance_done(node, token.scope, token.via or "#1", token.variables)
        return True

    def _done_inline(self, node: Node, scope: int | None, via: str | None, local: Locals) -> None:
        """An element done at once (no token) takes its flows, or ends its instance."""
        if self.compensation_left(node, scope):
            return  # interpreter_compensation.py: a compensation handler
        if (
            node.multi is not None
            and (via or "").startswith(INSTANCE)
            and self._is_body(scope, node.id)
        ):
            assert scope is not None and via is not None
            self._instance_done(node, scope, via, local)
        else:
            self._take_all(node, scope)

    def _child_variables(self, token: Token, variables: dict[str, Any]) -> dict[str, Any]:
        """A called execution's variables for a call activity's instance: those
        named like the instance's local variables update these (the input
        element and counter it got never reach the process); the others go on."""
        local = token.variables
        if not local or not self._is_instance(token):
            return variables
        token.variables = {**local, **{k: v for k, v in variables.items() if k in local}}
        return {k: v for k, v in variables.items() if k not in local}

    def _instance_done(self, node: Node, body_no: int, via: str, local: Locals) -> None:
        # interpreter.py imports this module.
        from services.workflows.interpreter import OutputFailed  # noqa: PLC0415

        multi, spec = node.multi, self.graph.multi[node.id]
        assert multi is not None
        body = self.state.tokens[body_no]
        count = len((body.variables or {}).get("items", []))
        done = 1 + self.index.markers(body_no)  # this one and those before
        value = None
        self._at = body_no  # what it sees: its locals over the enclosing instances'
        if spec.output is not None:
            try:
                value = plain(evaluate(spec.output, self._context(spec.output, local)))
            except ExpressionError as error:
                raise OutputFailed(node.id, f"outputElement of {node.id!r}: {error}") from error
        counter = via[1:]
        output = {"output": value} if multi.output_collection else None
        self._new_token(node, body_no, f"{MARKER}{counter}", output)
        finished = done >= count
        if spec.completion is not None and not finished:
            numbers = {
                "numberOfInstances": count,
                "numberOfCompletedInstances": done,
                "numberOfActiveInstances": 0 if multi.sequential else count - done,
            }
            try:
                scope = self._context(spec.completion, {**numbers, **(local or {})})
                finished = evaluate_bool(spec.completion, scope)
            except ExpressionError as error:
                message = f"completionCondition of {node.id!r}: {error}"
                raise OutputFailed(node.id, message) from error
        if finished:
            tokens = self.state.tokens
            markers = [t for no in self.index.children(body_no) if is_marker(t := tokens[no])]
            self._finish_body(node, body, collected(count, markers))
        elif multi.sequential:
            self._enqueue(node.id, body_no, f"{INSTANCE}{done + 1}")

    def _finish_body(self, node: Node, body: Token, outputs: list[Any]) -> None:
        """Every instance done, or the completion condition true: the others end."""
        tokens = self.state.tokens
        for token in [tokens[no] for no in self.index.children(body.no)]:
            if token.no in tokens:
                self._remove(token.no, record=None if is_marker(token) else "terminated")
        self._remove(body.no, record=None)
        self._end_body(node, body.scope, outputs)

    def _end_body(self, node: Node, scope: int | None, outputs: list[Any]) -> None:
        self._record(node, "completed")
        multi = node.multi
        assert multi is not None
        if multi.output_collection:
            variables = {multi.output_collection: outputs}
            self._merge_produced(node, variables, "the output collection")
        self._take_all(node, scope)

    def _record(self, node: Node, state: str) -> None:
        """The body's history (its output mappings are its instances')."""
        self.state.last_element = node.id
        self.step.history.append(HistoryRow(node.id, node.type, state, self.now))
