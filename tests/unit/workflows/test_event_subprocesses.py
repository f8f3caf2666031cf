"""Event sub-processes and error end events without a database: listeners
opened with their scope and closed with it, interrupting or not, firing
twice, timer cycles, errors caught by boundary events before event
sub-processes, error end events, escalations, and what is refused at save."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.workflows.bpmn import BpmnError, parse
from services.workflows.domain import COMPLETED, RUNNING
from services.workflows.graph import Definition, Graph, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.state import (
    ErrorThrown,
    ExecutionState,
    JobCompleted,
    MessageDelivered,
    Reactivate,
    Start,
    TimerFired,
    Trigger,
)
from services.workflows.stepper import new_state
from tests.workflows.bpmn_docs import flow
from tests.workflows.bpmn_esp_docs import (
    document,
    error_end,
    escalation_end,
    esp,
    on_error,
    on_escalation,
    on_message,
    on_timer,
)
from tests.workflows.bpmn_multi import job

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)


def graph_of(bpmn: str) -> Graph:
    # What is stored is what runs.
    return compile_graph(Definition.from_json(parse(bpmn, 1 << 20).to_json()))


def main(*extra: str, task: str = "work", escalation: str = "") -> str:
    """start → work (a job) → end, with `extra` elements beside."""
    return document(
        '<bpmn:startEvent id="start"/>',
        job(task, task),
        '<bpmn:endEvent id="end"/>',
        flow("m1", "start", task),
        flow("m2", task, "end"),
        *extra,
        escalation=escalation,
    )


def handler(name: str, trigger: str, *, interrupting: bool = True) -> str:
    """An event sub-process `name`: its start → a job of type `name` → its end."""
    return esp(
        name,
        trigger,
        job(f"{name}_job", name),
        f'<bpmn:endEvent id="{name}_end"/>',
        flow(f"{name}_f1", f"{name}_start", f"{name}_job"),
        flow(f"{name}_f2", f"{name}_job", f"{name}_end"),
        interrupting=interrupting,
    )


class Run:
    def __init__(self, bpmn: str, **variables: Any) -> None:
        self.graph = graph_of(bpmn)
        self.state: ExecutionState = new_state(
            uuid.uuid4(), "1.0.0", uuid.uuid4(), variables, NOW, actors=()
        )
        self.last = self.send(Start())

    def send(self, trigger: Trigger) -> Interpreter:
        run = Interpreter(self.graph, self.state, NOW)
        run.run(trigger)
        self.last = run
        return run

    def at(self, element: str) -> list[int]:
        return sorted(t.no for t in self.state.tokens.values() if t.element == element)

    def one(self, element: str) -> int:
        (token,) = self.at(element)
        return token

    def complete(self, element: str, **variables: Any) -> Interpreter:
        return self.send(JobCompleted(self.one(element), variables))

    @property
    def elements(self) -> list[str]:
        return self.state.current_nodes


def test_an_interrupting_message_event_subprocess_ends_the_main_path() -> None:
    run = Run(main(handler("cancel", on_message("cancel"))))
    assert run.elements == ["cancel_start", "work"]
    (subscription,) = run.last.step.subscriptions
    assert subscription.element == "cancel_start" and subscription.message == "cancel"
    listener = run.one("cancel_start")
    run.send(MessageDelivered(listener, "cancel_start", {"reason": "asked"}))
    assert run.elements == ["cancel", "cancel_job"]
    assert run.state.variables == {"reason": "asked"}
    history = [(h.element, h.state) for h in run.last.step.history]
    assert ("work", "terminated") in history and ("cancel_start", "completed") in history
    run.complete("cancel_job")
    assert run.state.status == COMPLETED


def test_a_non_interrupting_message_event_subprocess_fires_twice_and_is_waited_for() -> None:
    run = Run(main(handler("note", on_message("note"), interrupting=False)))
    listener = run.one("note_start")
    run.send(MessageDelivered(listener, "note_start", {}))
    run.send(MessageDelivered(listener, "note_start", {}))
    assert len(run.at("note_job")) == 2 and run.at("note_start") == [listener]
    run.complete("work")
    assert run.state.status == RUNNING  # the event sub-processes still run
    assert run.at("note_start") == [listener]
    first, second = run.at("note_job")
    run.send(JobCompleted(first, {}))
    run.send(JobCompleted(second, {}))
    assert run.state.status == COMPLETED
    assert not run.state.tokens


def test_listeners_do_not_keep_the_process_alive() -> None:
    run = Run(main(handler("cancel", on_message("cancel"))))
    run.complete("work")
    assert run.state.status == COMPLETED
    assert not run.state.tokens


def test_a_timer_cycle_fires_until_its_repetitions_run_out() -> None:
    run = Run(main(handler("tick", on_timer(cycle="R2/PT1M"), interrupting=False)))
    listener = run.one("tick_start")
    (timer,) = run.last.step.timers
    assert timer.element == "tick_start" and timer.repeat == 1
    run.send(TimerFired(listener, "tick_start", 1))
    (again,) = run.last.step.timers
    assert again.repeat == 0
    run.send(TimerFired(listener, "tick_start", 0))
    assert run.at("tick_start") == []  # nothing left to wait for
    assert len(run.at("tick_job")) == 2


def test_a_non_interrupting_duration_timer_fires_once() -> None:
    run = Run(main(handler("late", on_timer(duration="PT1H"), interrupting=False)))
    run.send(TimerFired(run.one("late_start"), "late_start", 0))
    assert run.at("late_start") == [] and len(run.at("late_job")) == 1
    run.complete("work")
    run.complete("late_job")
    assert run.state.status == COMPLETED


def test_an_interrupting_timer_event_subprocess() -> None:
    run = Run(main(handler("late", on_timer(duration="PT1H"))))
    run.send(TimerFired(run.one("late_start"), "late_start", 0))
    assert run.elements == ["late", "late_job"]


def test_an_error_event_subprocess_catches_a_thrown_job_error() -> None:
    run = Run(main(handler("failed", on_error("E1"))))
    assert run.elements == ["work"]  # no listener for errors
    run.send(ErrorThrown(run.one("work"), "E1", "no", {"why": "x"}))
    assert run.elements == ["failed", "failed_job"]
    assert run.last.step.uncaught_error is None
    run.complete("failed_job")
    assert run.state.status == COMPLETED


def test_an_error_of_another_code_is_not_caught() -> None:
    run = Run(main(handler("failed", on_error("E1"))))
    run.send(ErrorThrown(run.one("work"), "E2", "", {}))
    assert run.last.step.uncaught_error is not None
    assert run.elements == ["work"]


def test_a_boundary_event_catches_before_the_event_subprocess() -> None:
    bpmn = main(
        handler("failed", on_error()),
        '<bpmn:boundaryEvent id="caught" attachedToRef="work">'
        '<bpmn:errorEventDefinition id="b1"/></bpmn:boundaryEvent>',
        '<bpmn:endEvent id="handled"/>',
        flow("b2", "caught", "handled"),
    )
    run = Run(bpmn)
    run.send(ErrorThrown(run.one("work"), "E9", "", {}))
    assert run.state.status == COMPLETED
    assert "failed" not in [h.element for h in run.last.step.history]


def sub_with(*inside: str, extra: str = "") -> str:
    """start → sub (start → work → error end or end, and `inside`) → end."""
    return document(
        '<bpmn:startEvent id="start"/>',
        '<bpmn:subProcess id="sub"><bpmn:startEvent id="s_start"/>',
        job("work", "work"),
        *inside,
        flow("s1", "s_start", "work"),
        "</bpmn:subProcess>",
        '<bpmn:endEvent id="end"/>',
        flow("m1", "start", "sub"),
        flow("m2", "sub", "end"),
        extra,
    )


def test_an_error_end_event_is_caught_by_an_event_subprocess_of_the_process() -> None:
    bpmn = sub_with(error_end("boom", "E1"), flow("s2", "work", "boom"))
    bpmn = bpmn.replace("</bpmn:process>", handler("failed", on_error("E1")) + "</bpmn:process>")
    run = Run(bpmn)
    run.complete("work")
    assert run.elements == ["failed", "failed_job"]


def test_an_uncaught_error_end_event_is_an_incident() -> None:
    run = Run(sub_with(error_end("boom", "E1"), flow("s2", "work", "boom")))
    run.complete("work")
    (incident,) = run.last.step.incidents
    assert incident.element == "boom" and "'E1'" in incident.message


def test_an_event_subprocess_in_a_sub_process_listens_while_it_runs() -> None:
    bpmn = sub_with(
        '<bpmn:endEvent id="s_end"/>',
        flow("s2", "work", "s_end"),
        handler("note", on_message("note"), interrupting=False),
    )
    run = Run(bpmn)
    listener = run.one("note_start")
    assert run.state.tokens[listener].scope == run.one("sub")
    run.send(MessageDelivered(listener, "note_start", {}))
    run.complete("work")
    assert run.elements == ["note", "note_job", "note_start", "sub"]
    run.complete("note_job")
    assert run.state.status == COMPLETED


def test_an_interrupting_event_subprocess_in_a_sub_process_then_the_sub_process_ends() -> None:
    bpmn = sub_with(
        '<bpmn:endEvent id="s_end"/>',
        flow("s2", "work", "s_end"),
        handler("stop", on_message("stop")),
    )
    run = Run(bpmn)
    run.send(MessageDelivered(run.one("stop_start"), "stop_start", {}))
    assert run.elements == ["stop", "stop_job", "sub"]
    run.complete("stop_job")
    assert run.state.status == COMPLETED


def test_an_error_thrown_in_a_sub_process_is_caught_by_its_event_subprocess() -> None:
    bpmn = sub_with(
        '<bpmn:endEvent id="s_end"/>',
        flow("s2", "work", "s_end"),
        handler("failed", on_error()),
    )
    run = Run(bpmn)
    run.send(ErrorThrown(run.one("work"), "ANY", "", {}))
    assert run.elements == ["failed", "failed_job", "sub"]
    run.complete("failed_job")
    assert run.state.status == COMPLETED


@pytest.mark.parametrize("interrupting", [True, False])
def test_an_escalation_event_subprocess(interrupting: bool) -> None:
    bpmn = sub_with(escalation_end("up"), flow("s2", "work", "up"), extra="")
    bpmn = bpmn.replace(
        "</bpmn:process>",
        handler("esc", on_escalation(), interrupting=interrupting) + "</bpmn:process>",
    )
    bpmn = bpmn.replace(
        "<bpmndi:BPMNDiagram",
        '<bpmn:escalation id="Escalation_esp" escalationCode="up"/><bpmndi:BPMNDiagram',
    )
    run = Run(bpmn)
    run.complete("work")
    assert run.at("esc_job")
    if interrupting:
        assert run.elements == ["esc", "esc_job"]
    else:
        assert "esc" in run.elements and "sub" not in run.elements  # the sub-process ended
    run.complete("esc_job")
    assert run.state.status == COMPLETED


@pytest.mark.parametrize(
    ("bpmn", "message"),
    [
        (main(handler("e", on_error(), interrupting=False)), "always interrupting"),
        (main(handler("t", on_timer(cycle="R/PT1M"))), "non-interrupting"),
        (
            main(esp("outer", on_message("a"), handler("inner", on_message("b")))),
            "inside an event sub-process",
        ),
        (
            main(esp("e", on_message("a"), '<bpmn:endEvent id="x"/>'), flow("m3", "e", "work")),
            "sequence flows",
        ),
        (
            document(
                '<bpmn:startEvent id="start">' + on_error() + "</bpmn:startEvent>",
                '<bpmn:endEvent id="end"/>',
                flow("m1", "start", "end"),
            ),
            "an error startEvent is only for event sub-processes",
        ),
        (
            main(
                '<bpmn:endEvent id="bad"><bpmn:errorEventDefinition id="x"/></bpmn:endEvent>',
                flow("m3", "work", "bad"),
            ),
            "errorRef",
        ),
        (
            main(esp("n", "", '<bpmn:endEvent id="x"/>', flow("n1", "n_start", "x"))),
            "starts with a message, timer",
        ),
    ],
)
def test_what_is_refused_at_save(bpmn: str, message: str) -> None:
    with pytest.raises(BpmnError) as raised:
        parse(bpmn, 1 << 20)
    assert message in str(raised.value)


def test_each_multi_instance_sub_process_instance_listens() -> None:
    bpmn = sub_with(
        '<bpmn:endEvent id="s_end"/>',
        flow("s2", "work", "s_end"),
        handler("note", on_message("note"), interrupting=False),
    ).replace(
        '<bpmn:subProcess id="sub">',
        '<bpmn:subProcess id="sub"><bpmn:multiInstanceLoopCharacteristics>'
        '<bpmn:extensionElements><zeebe:loopCharacteristics inputCollection="=[1, 2]"'
        ' inputElement="item"/></bpmn:extensionElements>'
        "</bpmn:multiInstanceLoopCharacteristics>",
    )
    run = Run(bpmn)
    listeners = run.at("note_start")
    assert len(listeners) == 2
    assert len({run.state.tokens[no].scope for no in listeners}) == 2
    for token in run.at("work"):
        run.send(JobCompleted(token, {}))
    assert run.state.status == COMPLETED
    assert not run.state.tokens


def test_a_listener_whose_correlation_key_fails_listens_again_once_resolved() -> None:
    bpmn = main(handler("note", on_message("note"))).replace(
        '<bpmn:message id="Msg_note" name="note"/>',
        '<bpmn:message id="Msg_note" name="note"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderId"/></bpmn:extensionElements>'
        "</bpmn:message>",
    )
    run = Run(bpmn)
    (incident,) = run.last.step.incidents
    assert incident.element == "note_start"
    run.state.variables["orderId"] = "o-1"
    run.send(Reactivate(run.one("note_start")))
    (subscription,) = run.last.step.subscriptions
    assert subscription.element == "note_start"
    assert run.last.events.correlation_keys == {(run.one("note_start"), "note_start"): "o-1"}
    assert run.elements == ["note_start", "work"]
