"""The interpreter's task decisions, without a database: input mappings are
local to their element (its job's headers and token carry them, the process
never sees them), a script's result and a job's variables are set as Zeebe
sets them, and a stored graph saved before inputs and scripts still loads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from services.workflows.bpmn import parse
from services.workflows.domain import COMPLETED, RUNNING
from services.workflows.graph import Definition, compile_graph
from services.workflows.interpreter import Interpreter
from services.workflows.state import JobCompleted, Start
from services.workflows.stepper import new_state
from tests.workflows.bpmn_docs import end, linear
from tests.workflows.bpmn_docs import start as start_event

NOW = datetime(2030, 1, 1, 9, tzinfo=UTC)


def task(kind: str, body: str) -> str:
    return (
        f'<bpmn:{kind} id="t"><bpmn:extensionElements>{body}</bpmn:extensionElements></bpmn:{kind}>'
    )


def run(bpmn: str, **variables: Any) -> Interpreter:
    graph = compile_graph(parse(bpmn, 1 << 20))
    state = new_state(uuid.uuid4(), "1.0.0", uuid.uuid4(), variables, NOW, actors=())
    interpreter = Interpreter(graph, state, NOW)
    interpreter.run(Start())
    return interpreter


def test_the_inputs_of_a_job_ride_on_its_token_and_its_builtin_headers() -> None:
    body = (
        '<zeebe:taskDefinition type="lifecycle.set_stage"/>'
        '<zeebe:ioMapping><zeebe:input source="=next" target="stage"/></zeebe:ioMapping>'
    )
    ran = run(linear(start_event(), task("sendTask", body), end()), next="Retention")
    (job,) = ran.step.jobs
    assert job.headers == {"stage": "Retention"}
    assert ran.state.tokens[job.token].variables == {"stage": "Retention"}
    ran.run(JobCompleted(job.token, {"stage": "ignored", "done": True}))
    assert ran.state.status == COMPLETED
    assert ran.state.variables == {"next": "Retention", "done": True}


def test_a_bad_dynamic_stage_is_an_incident_and_no_job() -> None:
    body = (
        '<zeebe:taskDefinition type="lifecycle.set_stage"/>'
        '<zeebe:ioMapping><zeebe:input source="=next" target="stage"/></zeebe:ioMapping>'
    )
    ran = run(linear(start_event(), task("serviceTask", body), end()), next=3)
    assert ran.state.status == RUNNING and not ran.step.jobs
    (incident,) = ran.step.incidents
    assert incident.message.startswith("parameter 'stage' must be one of")


def test_a_script_result_goes_to_the_process_unless_outputs_map_it() -> None:
    plain = task("scriptTask", '<zeebe:script expression="=n + 1" resultVariable="m"/>')
    assert run(linear(start_event(), plain, end()), n=1).state.variables == {"n": 1, "m": 2}
    mapped = task(
        "scriptTask",
        '<zeebe:script expression="=n + 1" resultVariable="m"/>'
        '<zeebe:ioMapping><zeebe:output source="=m * 10" target="big"/></zeebe:ioMapping>',
    )
    assert run(linear(start_event(), mapped, end()), n=1).state.variables == {"n": 1, "big": 20}


def test_a_script_result_named_like_an_input_stays_local() -> None:
    body = (
        '<zeebe:script expression="=x * 2" resultVariable="x"/>'
        '<zeebe:ioMapping><zeebe:input source="=1" target="x"/></zeebe:ioMapping>'
    )
    ran = run(linear(start_event(), task("scriptTask", body), end()))
    assert ran.state.status == COMPLETED and ran.state.variables == {}


def test_a_graph_stored_before_inputs_and_scripts_still_loads() -> None:
    stored = parse(linear(start_event(), end()), 1 << 20).to_json()
    for node in stored["nodes"]:
        del node["inputs"], node["script"]
    graph = compile_graph(Definition.from_json(stored))
    assert graph.inputs == {} and graph.scripts == {}
