"""Multi-instance bookkeeping without a database: instances and their local
variables, the output collection in input order whatever the completion
order, the completion condition and its numbers, sequential instances one
after the other, an empty collection, and the collection's incidents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.workflows.bpmn import BpmnError, parse
from services.workflows.domain import COMPLETED
from services.workflows.graph import Definition, Graph, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.interpreter_multi import collected, instance_locals, is_marker
from services.workflows.multi_spec import MultiInstance
from services.workflows.state import ExecutionState, JobCompleted, Start, Token
from services.workflows.stepper import new_state
from tests.workflows.bpmn_docs import definitions, flow
from tests.workflows.bpmn_multi import around, job, marker, script

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)


def graph_of(bpmn: str) -> Graph:
    definition = parse(bpmn, 1 << 20)
    # What is stored is what runs.
    return compile_graph(Definition.from_json(definition.to_json()))


def started(graph: Graph, **variables: Any) -> tuple[ExecutionState, Interpreter]:
    state = new_state(uuid.uuid4(), "1.0.0", uuid.uuid4(), variables, NOW, actors=())
    run = Interpreter(graph, state, NOW)
    run.run(Start())
    return state, run


def jobs_of(state: ExecutionState) -> list[Token]:
    return sorted(
        (t for t in state.tokens.values() if (t.via or "").startswith("#")), key=lambda t: t.no
    )


def complete(graph: Graph, state: ExecutionState, token: Token, **variables: Any) -> Interpreter:
    run = Interpreter(graph, state, NOW)
    run.run(JobCompleted(token.no, variables))
    return run


MI_JOB = job("work", "work", marker("=items", output=("results", "=result")))


def test_parallel_instances_have_their_locals_and_outputs_collect_in_input_order() -> None:
    graph = graph_of(around(MI_JOB, "work"))
    state, _ = started(graph, items=["a", "b", "c"])
    instances = jobs_of(state)
    assert [t.variables for t in instances] == [
        {"loopCounter": 1, "item": "a", "result": None},
        {"loopCounter": 2, "item": "b", "result": None},
        {"loopCounter": 3, "item": "c", "result": None},
    ]
    for token in reversed(instances):  # completed in reverse order
        complete(graph, state, token, result=token.variables["item"].upper())  # type: ignore[index]
    assert state.status == COMPLETED
    assert state.variables == {"items": ["a", "b", "c"], "results": ["A", "B", "C"]}
    assert not state.tokens


def test_sequential_instances_run_one_after_the_other() -> None:
    multi = marker("=items", "n", sequential=True, output=("doubled", "=n * 2"))
    graph = graph_of(around(job("work", "work", multi), "work"))
    state, _ = started(graph, items=[1, 2, 3])
    seen = []
    while state.status != COMPLETED:
        (token,) = jobs_of(state)
        seen.append(token.variables)
        complete(graph, state, token)
    assert [s["loopCounter"] for s in seen if s] == [1, 2, 3]
    assert state.variables["doubled"] == [2, 4, 6]


def test_the_completion_condition_cuts_short_and_sees_the_numbers() -> None:
    multi = marker(
        "=items",
        output=("results", "=result"),
        completion="=numberOfCompletedInstances >= 2 && numberOfInstances == 4"
        " && numberOfActiveInstances == 2",
    )
    graph = graph_of(around(job("work", "work", multi), "work"))
    state, _ = started(graph, items=[1, 2, 3, 4])
    first, second, *_ = jobs_of(state)
    complete(graph, state, second, result="two")
    last = complete(graph, state, first, result="one")
    assert state.status == COMPLETED
    assert state.variables["results"] == ["one", "two", None, None]
    terminated = [h.element for h in last.step.history if h.state == "terminated"]
    assert terminated == ["work", "work"]


def test_an_empty_collection_completes_at_once() -> None:
    graph = graph_of(around(MI_JOB, "work"))
    state, _ = started(graph, items=[])
    assert state.status == COMPLETED
    assert state.variables["results"] == []


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ("not a list", "gave a string, not a list"),
        (list(range(10_001)), "has 10,001 elements, more than the limit of 10,000 instances"),
    ],
)
def test_a_bad_collection_is_an_incident_on_the_activity(items: Any, expected: str) -> None:
    graph = graph_of(around(MI_JOB, "work"))
    _, run = started(graph, items=items)
    (incident,) = run.step.incidents
    assert incident.element == "work"
    assert expected in incident.message


def test_inline_instances_and_a_sub_process_see_their_element() -> None:
    squares = script("sq", "=item * item", "square", marker("=items", output=("sq", "=square")))
    graph = graph_of(around(squares, "sq"))
    state, _ = started(graph, items=[1, 2, 3])
    assert state.status == COMPLETED
    assert state.variables["sq"] == [1, 4, 9]
    sub = (
        '<bpmn:subProcess id="sub">'
        '<bpmn:startEvent id="s"/>'
        + job("inner", "work")
        + '<bpmn:endEvent id="e"/>'
        + flow("g1", "s", "inner")
        + flow("g2", "inner", "e")
        + marker("=items", output=("got", "=item + 1"))
        + "</bpmn:subProcess>"
    )
    graph = graph_of(around(sub, "sub"))
    state, _ = started(graph, items=[10, 20])
    inner = sorted((t for t in state.tokens.values() if t.element == "inner"), key=lambda t: t.no)
    # The job sees the instance's element and counter.
    assert [t.variables for t in inner] == [
        {"loopCounter": 1, "item": 10},
        {"loopCounter": 2, "item": 20},
    ]
    for token in inner:
        complete(graph, state, token)
    assert state.status == COMPLETED
    assert state.variables == {"items": [10, 20], "got": [11, 21]}


def test_the_bookkeeping_helpers() -> None:
    spec = MultiInstance(False, "=xs", "x", "out", "=res")
    assert instance_locals(spec, ["a", "b"], 2) == {"loopCounter": 2, "x": "b", "res": None}
    assert MultiInstance(False, "=xs", "x", "out", "=x * 2").output_variable is None
    markers = [Token(5, "t", 1, "=2", {"output": "B"}), Token(6, "t", 1, "=1", {"output": "A"})]
    assert all(is_marker(m) for m in markers)
    assert collected(3, markers) == ["A", "B", None]


@pytest.mark.parametrize(
    ("multi", "expected"),
    [
        ("<bpmn:standardLoopCharacteristics/>", "loop markers"),
        (marker("=items", "vars"), "inputElement 'vars' must be a variable name"),
        (marker("=[1] + "), "expression"),
        (marker('="text"'), "must give a list"),
    ],
)
def test_markers_refused_at_save(multi: str, expected: str) -> None:
    with pytest.raises(BpmnError) as raised:
        parse(around(job("work", "work", multi), "work"), 1 << 20)
    assert expected in str(raised.value)
    assert "'work'" in str(raised.value)


def test_a_static_collection_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A CEL literal is at most 256 elements and 4,096 characters: shown with a lower limit.
    monkeypatch.setattr("services.workflows.bpmn_markers.MAX_INSTANCES", 3)
    with pytest.raises(BpmnError, match="has 4 elements, more than the limit of 3 instances"):
        parse(around(job("work", "work", marker("=[1, 2, 3, 4]")), "work"), 1 << 20)


def test_a_marker_on_a_gateway_is_refused() -> None:
    bpmn = definitions(
        '<bpmn:startEvent id="start"/>',
        f'<bpmn:exclusiveGateway id="gw">{marker("=items")}</bpmn:exclusiveGateway>',
        '<bpmn:endEvent id="end"/>',
        flow("f1", "start", "gw"),
        flow("f2", "gw", "end"),
    )
    with pytest.raises(BpmnError, match="multi-instance marker on an exclusiveGateway"):
        parse(bpmn, 1 << 20)
