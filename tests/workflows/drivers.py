"""The same process run in memory by our interpreter and by SpiffWorkflow, with
service tasks completed by a worker function: for the differential test and the
in-process benchmark. Each run gives its final status and the elements in the
order they completed (and, played, the variables it ended with)."""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnParser  # type: ignore[import-untyped]
from SpiffWorkflow.bpmn.specs.bpmn_process_spec import (  # type: ignore[import-untyped]
    BpmnProcessSpec,
)
from SpiffWorkflow.bpmn.specs.defaults import (  # type: ignore[import-untyped]
    ManualTask,
    NoneTask,
)
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow  # type: ignore[import-untyped]
from SpiffWorkflow.util.task import TaskState  # type: ignore[import-untyped]

from services.workflows.bpmn import parse
from services.workflows.domain import RUNNING
from services.workflows.graph import Graph, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.state import ExecutionState, JobCompleted, Start, Token

# What a worker does for a service task: new variables from the element id and the current ones.
Worker = Callable[[str, dict[str, Any]], dict[str, Any]]
# A run's final status and the elements in the order they completed.
Run = tuple[str, list[str]]
# A run and the process variables it ended with.
Played = tuple[Run, dict[str, Any]]
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def our_graph(bpmn: str) -> Graph:
    return compile_graph(parse(bpmn, 1 << 20))


def new_execution(variables: dict[str, Any]) -> ExecutionState:
    """A pending execution of a version, as StartExecution makes one."""
    return ExecutionState(
        uuid.UUID(int=1),
        uuid.UUID(int=2),
        "1.0.0",
        uuid.UUID(int=3),
        "pending",
        dict(variables),
        1,
        {},
        None,
        NOW,
        new=True,
    )


def run_ours(graph: Graph, variables: dict[str, Any], worker: Worker) -> Run:
    return play_ours(graph, variables, worker)[0]


def play_ours(graph: Graph, variables: dict[str, Any], worker: Worker) -> Played:
    state = new_execution(variables)
    run = Interpreter(graph, state, NOW)
    run.run(Start())
    # The tokens waiting for a job (a heap, the oldest first; stale entries
    # dropped when seen): tokens are numbered in order and never reused, so only
    # those a run added can be new, and picking the oldest costs no scan of
    # every token (a 1,000-instance multi-instance would make that quadratic).
    waiting: list[int] = []
    seen = 1
    while state.status == RUNNING:
        for no in range(seen, state.next_token):
            token = state.tokens.get(no)
            if token and graph.nodes[token.element].type == "serviceTask" and _is_job(graph, token):
                heapq.heappush(waiting, no)
        seen = state.next_token
        while waiting and waiting[0] not in state.tokens:
            heapq.heappop(waiting)
        if not waiting:
            break
        token = state.tokens[waiting[0]]
        # A multi-instance instance's job sees its local variables (its element).
        variables = {**state.variables, **(token.variables or {})}
        run.run(JobCompleted(token.no, worker(token.element, variables)))
    completed = [h.element for h in run.step.history if h.state == "completed"]
    return (state.status, completed), state.variables


def _is_job(graph: Graph, token: Token) -> bool:
    """Whether a service task's token waits for its job: on a multi-instance
    task, an instance's (not its body's nor a completed instance's marker)."""
    return graph.nodes[token.element].multi is None or (token.via or "").startswith("#")


def same_run(graph: Graph, ours: Run, theirs: Run) -> bool:
    """The same final status and the same completions in the same order, except
    where parallel branches (parallel and inclusive gateways, parallel
    multi-instance) make the order arbitrary: there, each element as often."""
    unordered = ("parallelGateway", "inclusiveGateway")
    if any(node.type in unordered or node.multi for node in graph.nodes.values()):
        return ours[0] == theirs[0] and Counter(ours[1]) == Counter(theirs[1])
    return ours == theirs


SpiffSpec = tuple[BpmnProcessSpec, dict[str, BpmnProcessSpec]]
# Spiff keeps no completion order (its task tree is ordered by structure, and
# timestamps may tie), so each completion is stamped from one counter.
COMPLETION_ORDER = "completion_order"
_completions = itertools.count()


def _stamp_completion(workflow: Any, task: Any) -> None:
    task.internal_data[COMPLETION_ORDER] = next(_completions)


def spiff_spec(bpmn: str, process_id: str) -> SpiffSpec:
    parser = BpmnParser()
    parser.add_bpmn_str(bpmn.encode())
    spec, subprocesses = parser.get_spec(process_id), parser.get_subprocess_specs(process_id)
    for process in (spec, *subprocesses.values()):
        for task_spec in process.task_specs.values():
            task_spec.completed_event.connect(_stamp_completion)
    return spec, subprocesses


def run_spiff(spec: SpiffSpec, variables: dict[str, Any], worker: Worker) -> Run:
    return play_spiff(spec, variables, worker)[0]


def play_spiff(spec: SpiffSpec, variables: dict[str, Any], worker: Worker) -> Played:
    """Spiff leaves service tasks, and also undefined and manual ones, to the
    host: `worker` does the service tasks, the others just complete, as they
    pass through in our engine. Script tasks run their Python."""
    workflow = BpmnWorkflow(*spec)
    for task in workflow.get_tasks():
        task.data.update(variables)
    workflow.do_engine_steps()
    while True:
        # Spiff starts a service task and leaves it STARTED for the host to complete.
        waiting = workflow.get_tasks(state=TaskState.READY | TaskState.STARTED)
        tasks = [t for t in waiting if t.task_spec.bpmn_id]
        if not tasks:
            break
        task = tasks[0]
        if not isinstance(task.task_spec, NoneTask | ManualTask):
            task.data.update(worker(task.task_spec.bpmn_id, dict(task.data)))
        if task.state == TaskState.STARTED:
            task.complete()
        else:
            task.run()
        workflow.do_engine_steps()
    completed = sorted(
        (t for t in workflow.get_tasks(state=TaskState.COMPLETED) if t.task_spec.bpmn_id),
        key=lambda t: t.internal_data[COMPLETION_ORDER],
    )
    status = "completed" if workflow.is_completed() else "running"
    return (status, [t.task_spec.bpmn_id for t in completed]), dict(workflow.data)
