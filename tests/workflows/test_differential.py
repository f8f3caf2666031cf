"""Differential test: on processes both engines support (gateways with
conditions and defaults, parallel fork and join, inclusive fork and join,
parallel multi-instance, loops through back-edges, embedded sub-processes,
service tasks, undefined and manual tasks, script tasks), our interpreter
takes the same path as SpiffWorkflow 3.x for generated variables: the same
elements completed in the same order, or, in a process with parallel
branches, the same elements as often; and computes the same variables."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.workflows.bpmn_docs import (
    chain,
    definitions,
    end,
    flow,
    parallel,
    service,
    start,
    subprocess,
    xor,
)
from tests.workflows.drivers import (
    our_graph,
    play_ours,
    play_spiff,
    run_ours,
    run_spiff,
    same_run,
    spiff_spec,
)

ROUTING = definitions(
    start(),
    xor("size", default="small"),
    service("big_deal", "t"),
    service("mid_deal", "t"),
    service("small_deal", "t"),
    xor("merge", default="m4"),
    xor("region", default="other"),
    service("eu", "t"),
    service("other_region", "t"),
    end("e1"),
    end("e2"),
    flow("f0", "start", "size"),
    flow("big", "size", "big_deal", "amount > 1000"),
    flow("mid", "size", "mid_deal", "amount > 100"),
    flow("small", "size", "small_deal"),
    flow("m1", "big_deal", "merge"),
    flow("m2", "mid_deal", "merge"),
    flow("m3", "small_deal", "merge"),
    flow("m4", "merge", "region"),
    flow("to_eu", "region", "eu", "country == 'DE'"),
    flow("other", "region", "other_region"),
    flow("f5", "eu", "e1"),
    flow("f6", "other_region", "e2"),
    process_id="routing",
)
FORK_JOIN = definitions(
    start(),
    parallel("fork"),
    service("a", "t"),
    service("b", "t"),
    parallel("inner_fork"),
    service("c", "t"),
    service("d", "t"),
    parallel("inner_join"),
    parallel("join"),
    xor("after", default="plain"),
    service("bonus", "t"),
    end("e1"),
    end("e2"),
    flow("f0", "start", "fork"),
    flow("f1", "fork", "a"),
    flow("f2", "fork", "b"),
    flow("f3", "fork", "inner_fork"),
    flow("f4", "inner_fork", "c"),
    flow("f5", "inner_fork", "d"),
    flow("f6", "c", "inner_join"),
    flow("f7", "d", "inner_join"),
    flow("f8", "inner_join", "join"),
    flow("f9", "a", "join"),
    flow("f10", "b", "join"),
    flow("f11", "join", "after"),
    flow("lucky", "after", "bonus", "score >= 7"),
    flow("plain", "after", "e2"),
    flow("f12", "bonus", "e1"),
    process_id="forkjoin",
)
LOOP = definitions(
    start(),
    service("attempt", "t"),
    xor("check", default="give_up"),
    xor("more", default="done_ok"),
    end("ok"),
    end("failed"),
    flow("f0", "start", "attempt"),
    flow("f1", "attempt", "check"),
    flow("retry", "check", "more", "tries < limit"),
    flow("give_up", "check", "failed"),
    flow("again", "more", "attempt", "tries < goal"),
    flow("done_ok", "more", "ok"),
    process_id="loop",
)
NESTED = definitions(
    start(),
    subprocess(
        "sub",
        start("s_in"),
        xor("in_gate", default="in_default"),
        service("in_yes", "t"),
        service("in_no", "t"),
        end("e_in1"),
        end("e_in2"),
        flow("i0", "s_in", "in_gate"),
        flow("i1", "in_gate", "in_yes", "flag == 1"),
        flow("in_default", "in_gate", "in_no"),
        flow("i2", "in_yes", "e_in1"),
        flow("i3", "in_no", "e_in2"),
    ),
    service("after_sub", "t"),
    end(),
    *chain("start", "sub", "after_sub", "end"),
    process_id="nested",
)

# An inclusive fork (every true condition, the default when none) and its join,
# then a parallel multi-instance task over `items`: written with both Zeebe's
# zeebe:loopCharacteristics and BPMN's data references, which SpiffWorkflow reads.
MULTI = (
    '<bpmn:serviceTask id="each" name="Each"><bpmn:extensionElements>'
    '<zeebe:taskDefinition type="t"/></bpmn:extensionElements>'
    "<bpmn:multiInstanceLoopCharacteristics><bpmn:extensionElements>"
    '<zeebe:loopCharacteristics inputCollection="=items" inputElement="item"'
    ' outputCollection="results" outputElement="=result"/></bpmn:extensionElements>'
    "<bpmn:loopDataInputRef>items</bpmn:loopDataInputRef>"
    "<bpmn:loopDataOutputRef>results</bpmn:loopDataOutputRef>"
    '<bpmn:inputDataItem id="item" name="item"/><bpmn:outputDataItem id="result" name="result"/>'
    "</bpmn:multiInstanceLoopCharacteristics></bpmn:serviceTask>"
)
INCLUSIVE_MULTI = definitions(
    start(),
    '<bpmn:inclusiveGateway id="fork" default="to_c"/>',
    service("a", "t"),
    service("b", "t"),
    service("c", "t"),
    '<bpmn:inclusiveGateway id="join"/>',
    MULTI,
    end(),
    flow("f0", "start", "fork"),
    flow("to_a", "fork", "a", "score >= 3"),
    flow("to_b", "fork", "b", "score >= 6"),
    flow("to_c", "fork", "c"),
    flow("fa", "a", "join"),
    flow("fb", "b", "join"),
    flow("fc", "c", "join"),
    flow("f1", "join", "each"),
    flow("f2", "each", "end"),
    process_id="inclusive_multi",
)


def script_task(id: str, result: str, cel: str, python: str) -> str:
    """A script task with a script for each engine: Zeebe's CEL expression
    (ours), and the same computation in Python (SpiffWorkflow's)."""
    return (
        f'<bpmn:scriptTask id="{id}" scriptFormat="python"><bpmn:extensionElements>'
        f'<zeebe:script expression={quoteattr("=" + cel)} resultVariable="{result}"/>'
        f"</bpmn:extensionElements><bpmn:script>{escape(f'{result} = {python}')}</bpmn:script>"
        "</bpmn:scriptTask>"
    )


# Undefined and manual tasks pass through (Spiff's host completes them); each
# script task sets a variable that the gateway after it reads.
SCRIPTED = definitions(
    start(),
    '<bpmn:task id="note"/>',
    '<bpmn:manualTask id="review"/>',
    script_task("score", "score", "amount * 2 + bonus", "amount * 2 + bonus"),
    xor("gate", default="low"),
    '<bpmn:task id="high_note"/>',
    '<bpmn:manualTask id="low_review"/>',
    script_task("label", "tier", '"gold" + "-" + country', '"gold" + "-" + country'),
    end("e1"),
    end("e2"),
    *chain("start", "note", "review", "score", "gate"),
    flow("high", "gate", "high_note", "score > 100"),
    flow("low", "gate", "low_review"),
    *chain("high_note", "label", "e1", prefix="h"),
    flow("f_low", "low_review", "e2"),
    process_id="scripted",
)


def counting_worker(element: str, variables: dict[str, Any]) -> dict[str, Any]:
    if element == "attempt":
        return {"tries": variables["tries"] + 1}
    if element == "each":
        # SpiffWorkflow also asks its multi-instance task itself, without an item.
        return {"result": variables["item"] * 2} if "item" in variables else {}
    return {f"done_{element}": True}


PROCESSES = {
    "routing": ROUTING,
    "forkjoin": FORK_JOIN,
    "loop": LOOP,
    "nested": NESTED,
    "inclusive_multi": INCLUSIVE_MULTI,
    "scripted": SCRIPTED,
}
VARIABLES = {
    "routing": st.fixed_dictionaries(
        {"amount": st.integers(-5, 5000), "country": st.sampled_from(["DE", "FR", "US"])}
    ),
    "forkjoin": st.fixed_dictionaries({"score": st.integers(0, 10)}),
    "loop": st.fixed_dictionaries(
        {"tries": st.just(0), "limit": st.integers(1, 6), "goal": st.integers(1, 6)}
    ),
    "nested": st.fixed_dictionaries({"flag": st.integers(0, 2)}),
    "inclusive_multi": st.fixed_dictionaries(
        {"score": st.integers(0, 10), "items": st.lists(st.integers(-50, 50), max_size=6)}
    ),
    "scripted": st.fixed_dictionaries(
        {
            "amount": st.integers(-100, 200),
            "bonus": st.integers(0, 5),
            "country": st.sampled_from(["DE", "FR", "US"]),
        }
    ),
}

# The variables a run computes, compared at its end: what the loop counted and
# the script tasks set (the workers' other outputs differ by driver: Spiff also
# asks a worker for a sub-process, and gathers no multi-instance output here).
RESULTS = {"loop": ("tries",), "scripted": ("score", "tier")}


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_our_engine_takes_the_same_path_as_spiffworkflow(name: str) -> None:
    bpmn = PROCESSES[name]
    graph, spec = our_graph(bpmn), spiff_spec(bpmn, name)

    @settings(max_examples=40, deadline=None)
    @given(VARIABLES[name])
    def same_path(variables: dict[str, Any]) -> None:
        ours, our_variables = play_ours(graph, variables, counting_worker)
        theirs, their_variables = play_spiff(spec, variables, counting_worker)
        assert same_run(graph, ours, theirs), (variables, ours, theirs)
        compared = RESULTS.get(name, ())
        assert {v: our_variables.get(v) for v in compared} == {
            v: their_variables.get(v) for v in compared
        }
        assert ours[0] == "completed"

    same_path()


SEQUENCES = [
    (
        "routing",
        {"amount": 500, "country": "DE"},
        ["start", "size", "mid_deal", "merge", "region", "eu", "e1"],
    ),
    (
        "loop",
        {"tries": 0, "limit": 5, "goal": 2},
        ["start", "attempt", "check", "more", "attempt", "check", "more", "ok"],
    ),
    (
        "nested",
        {"flag": 1},
        ["start", "s_in", "in_gate", "in_yes", "e_in1", "sub", "after_sub", "end"],
    ),
    (
        "scripted",
        {"amount": 60, "bonus": 1, "country": "FR"},
        ["start", "note", "review", "score", "gate", "high_note", "label", "e1"],
    ),
]


@pytest.mark.parametrize(("name", "variables", "expected"), SEQUENCES)
def test_both_engines_report_completions_in_the_order_they_happened(
    name: str, variables: dict[str, Any], expected: list[str]
) -> None:
    bpmn = PROCESSES[name]
    graph, spec = our_graph(bpmn), spiff_spec(bpmn, name)
    assert run_ours(graph, variables, counting_worker) == ("completed", expected)
    assert run_spiff(spec, variables, counting_worker) == ("completed", expected)
    assert not same_run(graph, ("completed", expected), ("completed", expected[::-1]))


def test_both_engines_compute_the_same_script_results() -> None:
    graph, spec = our_graph(SCRIPTED), spiff_spec(SCRIPTED, "scripted")
    variables = {"amount": 60, "bonus": 1, "country": "FR"}
    for _, computed in (
        play_ours(graph, variables, counting_worker),
        play_spiff(spec, variables, counting_worker),
    ):
        assert (computed["score"], computed["tier"]) == (121, "gold-FR")
