"""Cron cycles where ISO-8601 cycles already run (non-interrupting boundary
events and event sub-processes), without a database: each timer is due at
the next firing of the cron expression after the moment it is armed, and it
repeats for ever; and a cycle start event starts its execution at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.workflows.bpmn import parse
from services.workflows.domain import COMPLETED
from services.workflows.graph import Definition, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.state import ExecutionState, Start, TimerFired, Trigger
from services.workflows.stepper import new_state
from tests.workflows.bpmn_docs import boundary, definitions, end, flow, linear, service
from tests.workflows.bpmn_esp_docs import document, esp, on_timer

# A Tuesday; the cron below fires at 9:00 on weekdays.
TUESDAY = datetime(2030, 1, 1, 9, tzinfo=UTC)
WEEKDAYS_AT_NINE = "0 0 9 * * MON-FRI"


def fresh() -> ExecutionState:
    return new_state(uuid.uuid4(), "1.0.0", uuid.uuid4(), {}, TUESDAY, actors=())


def step(bpmn: str, state: ExecutionState, trigger: Trigger, now: datetime) -> Interpreter:
    graph = compile_graph(Definition.from_json(parse(bpmn, 1 << 20).to_json()))
    run = Interpreter(graph, state, now)
    run.run(trigger)
    return run


def token_of(state: ExecutionState, element: str) -> int:
    (token,) = [t.no for t in state.tokens.values() if t.element == element]
    return token


def test_a_cron_cycle_on_a_non_interrupting_boundary_event_repeats_at_its_firings() -> None:
    bpmn = linear(
        '<bpmn:startEvent id="start"/>',
        service("work", "work"),
        end(),
    ).replace(
        "</bpmn:process>",
        boundary("remind", "work", cycle=WEEKDAYS_AT_NINE, interrupting=False)
        + service("nudge", "nudge")
        + end("nudged")
        + flow("r1", "remind", "nudge")
        + flow("r2", "nudge", "nudged")
        + "</bpmn:process>",
    )
    state = fresh()
    (timer,) = step(bpmn, state, Start(), TUESDAY).step.timers
    assert (timer.element, timer.due_at, timer.repeat) == (
        "remind",
        datetime(2030, 1, 2, 9, tzinfo=UTC),
        None,
    )
    friday = datetime(2030, 1, 4, 9, tzinfo=UTC)
    fired = step(bpmn, state, TimerFired(token_of(state, "work"), "remind", None), friday)
    (again,) = fired.step.timers
    # Friday 9:00 fired: the next weekday at 9:00 is Monday.
    assert (again.due_at, again.repeat) == (datetime(2030, 1, 7, 9, tzinfo=UTC), None)
    assert sorted(state.current_nodes) == ["nudge", "work"]


def test_a_cron_cycle_starts_a_non_interrupting_event_subprocess_at_each_firing() -> None:
    bpmn = document(
        '<bpmn:startEvent id="start"/>',
        service("work", "work"),
        end(),
        flow("m1", "start", "work"),
        flow("m2", "work", "end"),
        esp(
            "tick",
            on_timer(cycle="@daily"),
            '<bpmn:endEvent id="tick_end"/>',
            flow("t1", "tick_start", "tick_end"),
            interrupting=False,
        ),
    )
    state = fresh()
    (timer,) = step(bpmn, state, Start(), TUESDAY).step.timers
    assert (timer.due_at, timer.repeat) == (datetime(2030, 1, 2, tzinfo=UTC), None)
    midnight = datetime(2030, 1, 2, tzinfo=UTC)
    listener = token_of(state, "tick_start")
    fired = step(bpmn, state, TimerFired(listener, "tick_start", None), midnight)
    (again,) = fired.step.timers
    assert again.due_at == datetime(2030, 1, 3, tzinfo=UTC)


def test_a_cycle_start_event_starts_the_execution_at_once() -> None:
    segment = (
        '<bpmn:extensionElements><zeebe:properties><zeebe:property name="segment"'
        f' value="{uuid.uuid4()}"/></zeebe:properties></bpmn:extensionElements>'
    )
    bpmn = definitions(
        f'<bpmn:startEvent id="start">{segment}<bpmn:timerEventDefinition>'
        f"<bpmn:timeCycle>{WEEKDAYS_AT_NINE}</bpmn:timeCycle></bpmn:timerEventDefinition>"
        "</bpmn:startEvent>",
        end(),
        flow("f1", "start", "end"),
    )
    state = fresh()
    run = step(bpmn, state, Start(), TUESDAY)
    assert run.step.timers == [] and state.status == COMPLETED
