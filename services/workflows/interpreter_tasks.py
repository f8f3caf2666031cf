"""What the interpreter (interpreter.py) does for tasks and their data: input
mappings (an element's local variables, which never reach the process unless
an output mapping puts them there), the built-in tasks' parameters (an input
or a header, the input winning), the built-in tasks done within the step
(emit an event, publish a message), script tasks, and the variables a job or
a script gives back, set as Zeebe sets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.stages import STAGES
from runtime.structs import compact_json
from services.workflows.domain import (
    EMIT_EVENT,
    EMITTED_EVENT_PREFIX,
    MAX_VARIABLES_BYTES,
    SET_STAGE,
    UPDATE_ATTRIBUTES,
    event_name_problem,
)
from services.workflows.expressions import (
    BYTES_PER_STEP,
    Expression,
    ExpressionError,
    Scope,
    WorkBudget,
    evaluate,
    evaluate_map,
    plain,
)
from services.workflows.graph import Graph, Node
from services.workflows.publish_rules import VARIABLES, ThrownMessage, thrown_message
from services.workflows.state import EmittedEvent, ExecutionState, Step, Token

if TYPE_CHECKING:
    from services.workflows.interpreter_events import EventOutcome

# What merging variables costs besides their size, in cel_cost steps.
MERGE_STEPS = 300
# An element's local variables (its input mappings'); None without any.
Locals = dict[str, Any] | None


class TaskSteps:
    """The interpreter's task steps (a mixin of interpreter.Interpreter)."""

    graph: Graph
    state: ExecutionState
    step: Step
    work: WorkBudget

    if TYPE_CHECKING:

        def _context(self, expression: Expression, local: Locals = None) -> Scope: ...
        @property
        def events(self) -> EventOutcome: ...
        def _merge(self, variables: dict[str, Any]) -> None: ...
        def _merge_produced(self, node: Node, variables: dict[str, Any], what: str) -> None: ...
        def _leave(self, token: Token, node: Node) -> None: ...
        def _incident(self, token: Token, message: str) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take_all(self, node: Node, scope: int | None) -> None: ...
        def _done_inline(
            self, node: Node, scope: int | None, via: str | None, local: Locals
        ) -> None: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    def _job_completed(self, token: Token, node: Node, variables: dict[str, Any]) -> None:
        """A job's variables go to the process (before its output mappings run),
        except those named like the element's local variables, which update
        these, as Zeebe sets them: an input never leaks into the process."""
        local = token.variables
        kept = {k: v for k, v in variables.items() if local is not None and k in local}
        self._merge({k: v for k, v in variables.items() if k not in kept})
        if kept:
            token.variables = {**(local or {}), **kept}
        self._leave(token, node)

    def _inputs(self, node: Node, seed: Locals = None) -> Locals:
        """The element's local variables, from its input mappings in order (each
        sees the ones before it) over `seed` (a multi-instance instance's); None
        without any."""
        mappings = self.graph.inputs.get(node.id)
        if not mappings:
            return dict(seed) if seed else None
        local: dict[str, Any] = dict(seed or {})
        for target, expression in mappings:
            try:
                local[target] = plain(evaluate(expression, self._context(expression, local)))
            except ExpressionError as error:
                raise ExpressionError(f"input {target!r} of {node.id!r}: {error}") from error
        size = len(compact_json({**self.state.variables, **local}).encode())
        self.work.spend(MERGE_STEPS + size // BYTES_PER_STEP)
        if size > MAX_VARIABLES_BYTES:
            raise ExpressionError(
                f"the inputs of {node.id!r} would make its variables larger than"
                f" {MAX_VARIABLES_BYTES} bytes"
            )
        return local

    def _builtin_inline(
        self, node: Node, scope: int | None, via: str | None, local: Locals
    ) -> None:
        """A built-in task done within the step (INLINE_BUILTINS): its event is
        emitted, or its message published (the stepper does it in the step's
        transaction, stepper_messages.py), and the element completes; a bad
        parameter is an incident on it."""
        task = node.task
        assert task is not None
        made: EmittedEvent | ThrownMessage
        try:
            if task.type == EMIT_EVENT:
                made = self._emitted(node, local)
            else:
                made = self._thrown(node, local)
        except ExpressionError as error:
            self._incident(self._new_token(node, scope, via, local), str(error))
            return
        self._history(node, "completed", local)
        if isinstance(made, EmittedEvent):
            self.step.events.append(made)
        else:
            self.events.messages.append(made)
        self._done_inline(node, scope, via, local)

    def _thrown(self, node: Node, local: Locals) -> ThrownMessage:
        """lifecycle.publish_message's message (publish_rules.py)."""
        assert node.task is not None
        headers = node.task.headers
        variables = self._map_parameter(node, VARIABLES, local)
        return thrown_message(
            lambda key: _parameter(local, key, headers), variables, self.state.user_id
        )

    def _emitted(self, node: Node, local: Locals) -> EmittedEvent:
        assert node.task is not None
        name = _parameter(local, "event", node.task.headers)
        if problem := event_name_problem(name):
            raise ExpressionError(f"parameter 'event' {problem} (got {name!r})")
        data = self._map_parameter(node, "data", local)
        return EmittedEvent(
            EMITTED_EVENT_PREFIX + name,
            {**data, "workflow_id": str(self.state.workflow_id), "element_id": node.id},
        )

    def _inline(self, node: Node, scope: int | None, via: str | None, local: Locals) -> None:
        """An undefined or manual task passes; a script task sets its result."""
        expression = self.graph.scripts.get(node.id)
        if node.script is not None and expression is not None:
            try:
                value = plain(evaluate(expression, self._context(expression, local)))
            except ExpressionError as error:
                token = self._new_token(node, scope, via, local)
                self._incident(token, f"the script of {node.id!r}: {error}")
                return
            local = self._produced(node, local, {node.script.result: value}, "the script's result")
        self._history(node, "completed", local)
        self._done_inline(node, scope, via, local)

    def _produced(self, node: Node, local: Locals, variables: dict[str, Any], what: str) -> Locals:
        """Variables an element made (a script's result), set as Zeebe sets them:
        with output mappings, they are local (the mappings say what the process
        gets); without, the local variables of those names are updated and the
        others go to the process."""
        if node.outputs:
            return {**(local or {}), **variables}
        kept = {k: v for k, v in variables.items() if local and k in local}
        self._merge_produced(node, {k: v for k, v in variables.items() if k not in kept}, what)
        return {**local, **kept} if local else local

    def _job_headers(self, node: Node, local: Locals) -> dict[str, Any]:
        """The headers of the job: a built-in task's parameters, from its inputs
        (local variables) or its headers, the inputs winning."""
        task = node.task
        assert task is not None
        if task.type == SET_STAGE:
            # A header was checked when the workflow was saved; an input is checked now.
            stage = _parameter(local, "stage", task.headers)
            if local is not None and "stage" in local and stage not in STAGES:
                raise ExpressionError(
                    f"parameter 'stage' must be one of {', '.join(STAGES)} (got {stage!r})"
                )
            return {"stage": stage}
        if task.type == UPDATE_ATTRIBUTES:
            return {"attributes": self._map_parameter(node, "attributes", local)}
        return dict(task.headers)

    def _map_parameter(self, node: Node, key: str, local: Locals) -> dict[str, Any]:
        if local is not None and key in local:
            value = local[key]
            if not isinstance(value, dict):
                raise ExpressionError(f"parameter {key!r} (an input) must be a map, not {value!r}")
            return value
        expression = self.graph.header_expressions.get((node.id, key))
        if expression is None:
            return {}
        return evaluate_map(expression, self._context(expression, local))


def _parameter(local: Locals, key: str, headers: dict[str, str]) -> Any:
    """A built-in task's parameter: its input of that name, else its header."""
    return local[key] if local is not None and key in local else headers.get(key)
