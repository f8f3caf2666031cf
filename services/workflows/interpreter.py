"""The interpreter: the BPMN state machine. It moves the tokens of one
execution in memory, in answer to triggers, and says what changed (state.py).
No I/O: the stepper (stepper.py) loads the state under a row lock, runs this,
and writes the outcome in the same transaction, so a step is committed whole
or not at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from runtime.structs import compact_json
from services.workflows.domain import (
    CANCELLED,
    COMPLETED,
    ENDED_STATUSES,
    FAILED,
    INLINE_BUILTINS,
    MAX_VARIABLES_BYTES,
    PENDING,
    RUNNING,
)
from services.workflows.expressions import (
    BYTES_PER_STEP,
    Expression,
    ExpressionError,
    Scope,
    StepTooLong,
    WorkBudget,
    evaluate,
    plain,
)
from services.workflows.graph import Graph, Node
from services.workflows.interpreter_compensation import CompensationSteps
from services.workflows.interpreter_esp import EspSteps
from services.workflows.interpreter_events import OWN_EVENTS, EventSteps
from services.workflows.interpreter_gateways import NO_FLOW_TAKEN, GatewaySteps
from services.workflows.interpreter_multi import MultiSteps, is_marker
from services.workflows.interpreter_tasks import MERGE_STEPS, Locals, TaskSteps
from services.workflows.interpreter_user_tasks import user_task_row
from services.workflows.interpreter_waits import WaitSteps
from services.workflows.state import (
    Cancel,
    ChildCompleted,
    ChildEnded,
    ChildErrorThrown,
    ChildRequest,
    ConsumedTimer,
    EmittedEvent,
    ErrorThrown,
    EscalationRaised,
    ExecutionState,
    Fail,
    HistoryRow,
    IncidentRow,
    JobCompleted,
    JobRow,
    MessageDelivered,
    ParentNotice,
    Reactivate,
    Start,
    Step,
    TimerFired,
    Token,
    Trigger,
    UncaughtError,
)
from services.workflows.token_index import TokenIndex

# Element activations one trigger may cause: a loop with no wait state ends here.
MAX_ACTIVATIONS = 10_000
# What activating an element, and merging variables besides their size, cost of
# the step's work budget (expressions.WorkBudget), in cel_cost steps.
ACTIVATION_STEPS = 200
# Elements a token passes straight through (a none intermediate throw event;
# undefined and manual tasks pass in _activity, applying their mappings).
PASS_THROUGH = frozenset({"startEvent", "intermediateThrowEvent"})
# Tasks done at once, without a job (a script task without a job type).
INLINE_TASKS = frozenset({"task", "manualTask", "scriptTask"})


class VariablesTooLarge(Exception):
    pass


class OutputFailed(Exception):
    """An output mapping failed after its element completed: the execution fails."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(message)
        self.element = element


class Interpreter(
    TaskSteps, EventSteps, GatewaySteps, MultiSteps, EspSteps, CompensationSteps, WaitSteps
):
    """Runs triggers against one execution's state, in place."""

    def __init__(
        self,
        graph: Graph,
        state: ExecutionState,
        now: datetime,
        profile: dict[str, Any] | None = None,
    ) -> None:
        self.graph = graph
        self.state = state
        self.now = now
        self.profile = profile
        self.step = Step()
        self._queue: deque[tuple[str, int | None, str | None]] = deque()
        self._pending: dict[int | None, int] = {}
        self._activations = 0
        self.work = WorkBudget()
        # What expressions read, until the variables change.
        self._scope: Scope | None = None
        # The token whose scope the current activation or trigger is in (multi-instance locals).
        self._at: int | None = None
        self.index = TokenIndex(state)  # state.tokens by scope and element

    # ------------------------------------------------------------ entry

    def run(self, trigger: Trigger) -> None:
        for _ in self.steps(trigger):
            pass

    def steps(self, trigger: Trigger) -> Iterator[None]:
        """Runs the trigger, pausing (yielding) after each slice of work, so
        that a caller on an event loop can let other calls run meanwhile."""
        state = self.state
        if state.status in ENDED_STATUSES:
            return
        self.step.changed = True
        if isinstance(trigger, Cancel):
            self._finish(CANCELLED, trigger.message, notify_parent=not trigger.by_parent)
            return
        if isinstance(trigger, Fail):
            self._finish(FAILED, trigger.message)
            return
        try:
            if isinstance(trigger, Start):
                self._start()
            elif (token := state.tokens.get(trigger.token)) is not None:
                self._dispatch(trigger, token)
            yield from self._drain_settled()
        except OutputFailed as error:
            self._finish(FAILED, str(error))
            # It failed there, whatever branches the failure ended after it.
            state.last_element = error.element
        except StepTooLong as error:
            self._finish(FAILED, str(error))

    def _dispatch(self, trigger: Trigger, token: Token) -> None:
        node = self.graph.nodes[token.element]
        self._at = token.no
        if isinstance(trigger, TimerFired):
            self.step.consumed_timers.append(ConsumedTimer(token.no, trigger.element))
            self._event_fired(token, node, trigger.element, {}, trigger.repeat)
        elif isinstance(trigger, MessageDelivered):
            self._event_fired(token, node, trigger.element, self.delivered(trigger), 0)
        elif isinstance(trigger, JobCompleted):
            self._job_completed(token, node, trigger.variables)
        elif isinstance(trigger, ChildCompleted):
            self._child_completed(token, node, self._child_variables(token, trigger.variables))
        elif isinstance(trigger, EscalationRaised):
            self.escalated_by_child(token, trigger.code)
        elif isinstance(trigger, ErrorThrown):
            self._merge(trigger.variables)
            self._throw(token, node, trigger.code, trigger.message)
        elif isinstance(trigger, ChildEnded):
            self._incident(token, trigger.message)
        elif isinstance(trigger, ChildErrorThrown):
            if not self.catch_error(token, trigger.code):
                self.error_to_caller(trigger.code, trigger.message)
        elif isinstance(trigger, Reactivate):
            self._remove(token.no, record=None)
            self._enqueue(token.element, token.scope, token.via)

    def _start(self) -> None:
        state = self.state
        start = self.graph.nodes[self.graph.definition.start]
        if start.timer and not start.segment and state.status == PENDING and not state.tokens:
            self._arm_all(self._new_token(start, None), [start])
            return
        self._begin()
        self._enqueue(start.id, None, None)

    def _begin(self) -> None:
        if self.state.status == PENDING:
            self.state.status = RUNNING
            self._event("execution.started")
            self.open_event_subprocesses(None)  # interpreter_esp.py

    # ------------------------------------------------------------ the token loop

    def _enqueue(self, element: str, scope: int | None, via: str | None) -> None:
        self._queue.append((element, scope, via))
        self._pending[scope] = self._pending.get(scope, 0) + 1

    def _drain(self) -> Iterator[None]:
        while self._queue and self.state.status not in ENDED_STATUSES:
            if self.work.pause_due():
                yield
            element, scope, via = self._queue.popleft()
            self._pending[scope] -= 1
            if scope is not None and scope not in self.state.tokens:
                continue  # its sub-process was interrupted meanwhile
            self._activations += 1
            self.work.spend(ACTIVATION_STEPS)
            if self._activations > MAX_ACTIVATIONS:
                self._finish(
                    FAILED,
                    f"more than {MAX_ACTIVATIONS} elements ran in one step"
                    " (a loop with no wait state?)",
                )
                return
            self._at = scope
            self._activate(self.graph.nodes[element], scope, via)

    def _activate(self, node: Node, scope: int | None, via: str | None) -> None:
        kind = node.type
        if (node.event in OWN_EVENTS and self._event_activated(node, scope, via)) or (
            node.event == "compensation" and self.compensation_thrown(node, scope, via)
        ):
            return  # interpreter_events.py, interpreter_compensation.py
        if kind == "startEvent" and self.listen_again(node, scope):
            return  # an event sub-process's listener (its incident resolved)
        if kind in PASS_THROUGH:
            self._pass(node, scope)
        elif kind == "endEvent" and node.event == "error":
            self.throw_error_end(node, scope, via)  # interpreter_esp.py
        elif kind == "endEvent":
            self._history(node, "completed")
            if node.event == "terminate":
                self._terminate_scope(scope)
            self._scope_may_end(scope)
        elif kind == "exclusiveGateway":
            self._exclusive(node, scope, via)
        elif kind == "parallelGateway":
            self._parallel(node, scope, via)
        elif kind == "inclusiveGateway":
            self._inclusive(node, scope, via)
        elif kind == "eventBasedGateway":
            targets = [self.graph.nodes[self.graph.flows[f].target] for f in node.outgoing]
            self._arm_all(self._new_token(node, scope, via), targets)
        elif kind == "intermediateCatchEvent":
            self.catch(node, scope, via)  # interpreter_waits.py
        else:
            self._activity(node, scope, via)

    def _activity(self, node: Node, scope: int | None, via: str | None) -> None:
        if self._multi_body(node, scope):
            self._activate_body(node, scope, via)  # interpreter_multi.py
            return
        activated, local = self.activation_locals(node, scope, via)
        if not activated:
            return
        task = node.task
        if task is not None and task.type in INLINE_BUILTINS:
            self._builtin_inline(node, scope, via, local)
            return
        if task is None and node.type in INLINE_TASKS:
            self._inline(node, scope, via, local)
            return
        token = self._new_token(node, scope, via, local)
        try:
            # A multi-instance activity's boundary events are its body's.
            for boundary_id in () if node.multi else node.boundaries:
                boundary = self.graph.nodes[boundary_id]
                if boundary.event in ("timer", "message", "signal"):
                    self._arm(token, boundary)
            if task is not None:
                headers = self._job_headers(node, local)
                self.step.jobs.append(JobRow(token.no, node.id, task.type, task.retries, headers))
            if node.user_task is not None:
                self.step.user_tasks.append(user_task_row(self, token, node))
        except ExpressionError as error:
            self._incident(token, str(error))
            return
        if node.type == "receiveTask":
            self._subscribe(token, node)
        elif node.type == "subProcess":
            assert node.start is not None
            self._enqueue(node.start, token.no, None)
            self.open_event_subprocesses(token)
        elif node.type == "callActivity":
            self.step.children.append(
                ChildRequest(
                    token.no,
                    node.called or "",
                    self._called_variables(node, token),
                    process_id=node.called_process,
                )
            )
        self._history(node, "activated")

    def activation_locals(
        self, node: Node, scope: int | None, via: str | None
    ) -> tuple[bool, Locals]:
        """(True, the element's local variables) as it is activated: its
        inputs over what its scope gives it; (False, None) after an incident
        naming the input that failed."""
        try:
            return True, self._inputs(node, self._instance_seed(node, scope, via))
        except ExpressionError as error:
            self._incident(self._new_token(node, scope, via), str(error))
            return False, None

    def _called_variables(self, node: Node, token: Token) -> dict[str, Any]:
        """What a called execution starts with: the caller's variables (unless
        propagateAllParentVariables is false), the call activity's inputs over them."""
        parent = self.state.variables if node.propagate_parent else {}
        return {**parent, **(token.variables or {})}

    # ------------------------------------------------------------ gateways

    def _exclusive(self, node: Node, scope: int | None, via: str | None) -> None:
        try:
            chosen = self._flows_chosen(node, first_only=True)
        except ExpressionError as error:
            self._incident(self._new_token(node, scope, via), str(error))
            return
        if not chosen:
            self._incident(self._new_token(node, scope, via), NO_FLOW_TAKEN)
            return
        self._history(node, "completed")
        self._take(chosen[0], scope)

    def _parallel(self, node: Node, scope: int | None, via: str | None) -> None:
        if len(node.incoming) > 1:
            arrived = self._new_token(node, scope, via)
            waiting = [t for t in self.index.at(node.id) if t.scope == scope and t.no != arrived.no]
            waiting.append(arrived)
            first: dict[str, Token] = {}
            for token in sorted(waiting, key=lambda t: t.no):
                if token.via is not None:
                    first.setdefault(token.via, token)
            if len(first) < len(node.incoming):
                return
            for token in first.values():
                self._remove(token.no, record=None)
        self._history(node, "completed")
        self._take_all(node, scope)

    # ------------------------------------------------------------ leaving and errors

    def _leave(self, token: Token, node: Node) -> None:
        self._remove(token.no, record="completed")
        if self.compensation_left(node, token.scope):
            return  # a compensation handler: its throw event goes on
        if self._instance_left(token, node):
            return  # a multi-instance instance: its body goes on
        self._take_all(node, token.scope)

    def _throw(self, token: Token, node: Node, code: str, message: str) -> None:
        if self.catch_error(token, code):  # boundary events, event sub-processes
            return
        detail = f": {message}" if message else ""
        self.step.uncaught_error = UncaughtError(
            token.no, f"error {code!r} thrown and not caught{detail}"
        )
        self.error_to_caller(code, message)

    def incident_at(self, token: int, message: str) -> None:
        self.step.changed = True
        self._incident(self.state.tokens[token], message)

    def _incident(self, token: Token, message: str) -> None:
        self.step.incidents.append(IncidentRow(token.no, token.element, message))

    # ------------------------------------------------------------ scopes

    def _scope_may_end(self, scope: int | None) -> None:
        if self._pending.get(scope, 0) > 0:
            return
        if self.index.has_children(scope) and not self.only_listeners_left(scope):
            return  # interpreter_esp.py: an event sub-process's listener does not count
        if scope is None:
            self._finish(COMPLETED, "")
            return
        token = self.state.tokens[scope]
        self._leave(token, self.graph.nodes[token.element])
        if self.graph.nodes[token.element].triggered:
            self._scope_may_end(token.scope)  # an event sub-process ended

    def _terminate_scope(self, scope: int | None) -> None:
        for no in self.index.children(scope):
            if no in self.state.tokens:
                self._remove(no, record="terminated")
        self._queue = deque(item for item in self._queue if item[1] != scope)
        self._pending[scope] = 0

    def _finish(self, status: str, message: str, *, notify_parent: bool = True) -> None:
        state = self.state
        for token in list(state.tokens.values()):
            if token.no in state.tokens:
                self._remove(token.no, record="terminated" if status != COMPLETED else None)
        self._queue.clear()
        state.status = status
        # An ended execution has no incident (a caller caught its error, say).
        self.step.uncaught_error = None
        self.step.incidents.clear()
        state.completed_at = self.now
        state.error_message = message or None
        event = {COMPLETED: "execution.completed", FAILED: "execution.failed"}
        self._event(event.get(status, "execution.cancelled"), message)
        if state.parent is not None and notify_parent:
            self.step.parent_notice = ParentNotice(status, dict(state.variables), message)

    # ------------------------------------------------------------ tokens

    def _new_token(
        self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
    ) -> Token:
        state = self.state
        token = Token(state.next_token, node.id, scope, via, local)
        state.next_token += 1
        self.index.add(token)
        self.step.added.add(token.no)
        return token

    def _remove(self, no: int, *, record: str | None) -> None:
        """Removes a token, the tokens inside it, and cancels the execution it called."""
        state = self.state
        token = self.index.pop(no)
        for inner in self.index.children(no):
            if inner in state.tokens:
                self._remove(inner, record="terminated")
        if no in self.step.added:
            self.step.added.discard(no)
        else:
            self.step.removed.add(no)
        node = self.graph.nodes[token.element]
        if node.type == "callActivity" and record == "terminated":
            self.step.cancelled_children.append(no)
        if node.user_task is not None and no in self.step.removed:
            self.step.closed_user_tasks.append(no)
        if record == "terminated":
            self.scope_terminated(no)
        if record is not None and not is_marker(token):
            self._history(node, record, token.variables)

    def _pass(self, node: Node, scope: int | None) -> None:
        self._history(node, "completed")
        self._take_all(node, scope)

    def _take_all(self, node: Node, scope: int | None) -> None:
        for flow_id in node.outgoing:
            self._take(flow_id, scope)
        if node.type == "endEvent":
            self._scope_may_end(scope)  # a message end event's job (or built-in) done

    def _take(self, flow_id: str, scope: int | None) -> None:
        self._enqueue(self.graph.flows[flow_id].target, scope, flow_id)

    # ------------------------------------------------------------ data

    def _merge(self, variables: dict[str, Any]) -> None:
        if not variables:
            return
        merged = {**self.state.variables, **variables}
        size = len(compact_json(merged).encode())
        self.work.spend(MERGE_STEPS + size // BYTES_PER_STEP)
        if size > MAX_VARIABLES_BYTES:
            raise VariablesTooLarge(
                f"the execution's variables would exceed {MAX_VARIABLES_BYTES} bytes"
            )
        self.state.variables = merged
        self._scope = None

    def _context(self, expression: Expression, local: Locals = None) -> Scope:
        """What an expression sees: the variables, and an element's local ones over them."""
        local = self._visible(local)
        if expression.uses_user and self.profile is None:
            raise ExpressionError("the user's profile could not be read (erased?)")
        if local:
            variables = {**self.state.variables, **local}
            values = {**variables, "vars": variables, "now": self.now}
            if self.profile is not None:
                values["user"] = self.profile
            return Scope(values, self.work)
        if self._scope is None:
            variables = self.state.variables
            values = {**variables, "vars": variables, "now": self.now}
            if self.profile is not None:
                values["user"] = self.profile
            self._scope = Scope(values, self.work)
        return self._scope

    def _history(self, node: Node, state: str, local: Locals = None) -> None:
        if state == "completed" and node.id in self.graph.outputs:
            self._apply_outputs(node, local)
        self.state.last_element = node.id
        self.step.history.append(HistoryRow(node.id, node.type, state, self.now))

    def _apply_outputs(self, node: Node, local: Locals) -> None:
        values = {}
        for target, expression in self.graph.outputs[node.id]:
            try:
                values[target] = plain(evaluate(expression, self._context(expression, local)))
            except ExpressionError as error:
                raise OutputFailed(node.id, f"output {target!r} of {node.id!r}: {error}") from error
        self._merge_produced(node, values, "the outputs")

    def _merge_produced(self, node: Node, variables: dict[str, Any], what: str) -> None:
        """Variables the workflow made, not a request (an output mapping's, a called
        execution's): too large fails the execution at `node`, never the request."""
        try:
            self._merge(variables)
        except VariablesTooLarge as error:
            raise OutputFailed(node.id, f"{what} of {node.id!r}: {error}") from error

    def _event(self, event_type: str, message: str = "") -> None:
        data = {"workflow_id": str(self.state.workflow_id), "workflow_version": self.state.version}
        if message:
            data["error_message"] = message
        self.step.events.append(EmittedEvent(event_type, data))
