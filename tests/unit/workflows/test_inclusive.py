"""The inclusive gateway without a database: the join's reachability check
over the graph (join_blocked), and the interpreter forking on every true
condition and joining on exactly the tokens that can still arrive."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from services.workflows.bpmn import parse
from services.workflows.domain import COMPLETED, RUNNING
from services.workflows.graph import Graph, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.interpreter_gateways import join_blocked, reaching
from services.workflows.state import ExecutionState, JobCompleted, Reactivate, Start
from services.workflows.stepper import new_state
from tests.workflows.bpmn_docs import definitions, flow, xor
from tests.workflows.bpmn_multi import diamond, inclusive, job

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)


def graph_of(bpmn: str) -> Graph:
    return compile_graph(parse(bpmn, 1 << 20))


def started(graph: Graph, **variables: Any) -> tuple[ExecutionState, Interpreter]:
    state = new_state(uuid.uuid4(), "1.0.0", uuid.uuid4(), variables, NOW, actors=())
    run = Interpreter(graph, state, NOW)
    run.run(Start())
    return state, run


def complete(graph: Graph, state: ExecutionState, element: str, **variables: Any) -> Interpreter:
    """Completes the job waiting at `element`, in a step of its own."""
    (token,) = [t.no for t in state.tokens.values() if t.element == element]
    run = Interpreter(graph, state, NOW)
    run.run(JobCompleted(token, variables))
    return run


def completed(run: Interpreter) -> list[str]:
    return [h.element for h in run.step.history if h.state == "completed"]


def waiting(state: ExecutionState) -> list[str]:
    return sorted(t.element for t in state.tokens.values())


BRANCHES = {"a": "=x > 1", "b": "=x > 2", "c": None}


def test_the_fork_takes_every_true_condition_and_the_default_only_when_none_is() -> None:
    graph = graph_of(diamond(BRANCHES, default="c"))
    assert waiting(started(graph, x=3)[0]) == ["a", "b"]
    assert waiting(started(graph, x=2)[0]) == ["a"]
    assert waiting(started(graph, x=0)[0]) == ["c"]


def test_no_true_condition_and_no_default_is_an_incident_resolved_by_running_it_again() -> None:
    graph = graph_of(diamond({"a": "=x > 1", "b": "=x > 2"}))
    state, run = started(graph, x=0)
    (incident,) = run.step.incidents
    assert incident.element == "fork"
    assert "no condition of an outgoing flow is true" in incident.message
    state.variables["x"] = 5
    again = Interpreter(graph, state, NOW)
    again.run(Reactivate(incident.token))
    assert waiting(state) == ["a", "b"]


def test_the_join_waits_for_every_branch_taken_and_only_those() -> None:
    graph = graph_of(diamond(BRANCHES, default="c"))
    state, _ = started(graph, x=3)
    complete(graph, state, "a")
    assert waiting(state) == ["b", "join"]
    last = complete(graph, state, "b")
    assert state.status == COMPLETED
    assert completed(last) == ["b", "join", "end"]
    # One branch: the join passes its one token at once.
    state, _ = started(graph, x=2)
    assert completed(complete(graph, state, "a")) == ["a", "join", "end"]


def ends_elsewhere() -> str:
    """fork → a → join; fork → b → xor (→ join, or → its own end)."""
    return definitions(
        '<bpmn:startEvent id="start"/>',
        inclusive("fork"),
        job("a", "work"),
        job("b", "work"),
        xor("choose", default="to_join"),
        inclusive("join"),
        '<bpmn:endEvent id="end"/>',
        '<bpmn:endEvent id="elsewhere"/>',
        flow("f0", "start", "fork"),
        flow("to_a", "fork", "a", "=true"),
        flow("to_b", "fork", "b", "=true"),
        flow("a_join", "a", "join"),
        flow("b_choose", "b", "choose"),
        flow("to_join", "choose", "join"),
        flow("to_end", "choose", "elsewhere", "=leave"),
        flow("after", "join", "end"),
    )


def test_a_branch_that_can_still_arrive_holds_the_join_until_it_goes_elsewhere() -> None:
    graph = graph_of(ends_elsewhere())
    state, _ = started(graph, leave=True)
    complete(graph, state, "a")
    assert waiting(state) == ["b", "join"]  # b could still come to the join
    last = complete(graph, state, "b")
    # b went to its own end: nothing can reach the join any more, which fires.
    assert completed(last) == ["b", "choose", "elsewhere", "join", "end"]
    assert state.status == COMPLETED


def test_a_branch_that_comes_makes_the_join_fire_with_both() -> None:
    graph = graph_of(ends_elsewhere())
    state, _ = started(graph, leave=False)
    complete(graph, state, "b")
    assert waiting(state) == ["a", "join"]
    last = complete(graph, state, "a")
    assert completed(last) == ["a", "join", "end"]
    assert state.status == COMPLETED


def test_join_blocked_is_reachability_over_the_graph() -> None:
    graph = graph_of(ends_elsewhere())
    assert reaching(graph, "join", "to_join") == {"choose", "b", "fork", "start"}
    assert reaching(graph, "join", "a_join") == {"a", "fork", "start"}
    assert join_blocked(graph, "join", ["a_join"], ["b", "join"])
    assert not join_blocked(graph, "join", ["a_join"], ["join"])
    assert not join_blocked(graph, "join", ["a_join", "to_join"], ["b"])
    # A token past the join (or at it) cannot come back to a flow before it.
    assert not join_blocked(graph, "join", ["a_join"], ["end", "join"])


def test_a_gateway_that_joins_and_forks() -> None:
    bpmn = definitions(
        '<bpmn:startEvent id="start"/>',
        inclusive("fork"),
        job("a", "work"),
        job("b", "work"),
        inclusive("both"),
        job("c", "work"),
        job("d", "work"),
        '<bpmn:endEvent id="end"/>',
        flow("f0", "start", "fork"),
        flow("to_a", "fork", "a", "=true"),
        flow("to_b", "fork", "b", "=false"),
        flow("a_both", "a", "both"),
        flow("b_both", "b", "both"),
        flow("to_c", "both", "c", "=n > 0"),
        flow("to_d", "both", "d", "=n > 1"),
        flow("c_end", "c", "end"),
        flow("d_end", "d", "end"),
    )
    graph = graph_of(bpmn)
    state, _ = started(graph, n=1)
    complete(graph, state, "a")
    assert waiting(state) == ["c"]
    complete(graph, state, "c")
    assert state.status == COMPLETED
    assert state.status != RUNNING
