"""Documents as the common modelers export them, diagram, pool, colours and
vendor extensions included (fixtures/): Camunda Modeler 5 (Zeebe task
definition, headers and output mapping, a collaboration whose participant
holds the process) and the bpmn.io demo (bpmn2 prefix, bioc colours, a
Camunda 7 external task, its one process not marked executable). Each is
saved and activated through the service, then runs to completion on each
branch of its gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import dict_to_struct, struct_to_dict
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    jobs,
    path,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution

FIXTURES = Path(__file__).parent / "fixtures"
CAMUNDA = "camunda_modeler_5.bpmn"
BPMN_IO = "bpmn_io_demo.bpmn"
# The camunda:topic of the bpmn.io document's service task.
LEAD_SCORE = "crm-lead-score"


@dataclass(frozen=True)
class Run:
    name: str
    document: str
    variables: dict[str, Any]
    path: list[str]
    # What the external worker answers, for a document whose task is external.
    job_result: dict[str, Any] | None = None
    # How long the timer on the path waits, if there is one.
    timer: timedelta | None = None
    # Variables the document's output mappings set.
    outputs: dict[str, Any] = field(default_factory=dict)


RUNS = [
    Run(
        "camunda: team plan waits a day",
        CAMUNDA,
        {"seats": 12},
        ["StartEvent_1", "Activity_0h4d9pz", "Gateway_1q5h2ka", "Event_0ue3l5w", "Event_1a9ts0e"],
        timer=timedelta(days=1),
        outputs={"team_plan": True},
    ),
    Run(
        "camunda: self-serve by the default flow",
        CAMUNDA,
        {"seats": 2},
        ["StartEvent_1", "Activity_0h4d9pz", "Gateway_1q5h2ka", "Event_0zq1r2d"],
        outputs={"team_plan": False},
    ),
    Run(
        "bpmn.io: hot lead waits two days",
        BPMN_IO,
        {"plan": "trial"},
        ["StartEvent_1", "Activity_1x0q6tb", "Gateway_0m2lx7c", "Event_1d6e0nv", "Event_0c2v9hl"],
        job_result={"lead_score": 9},
        timer=timedelta(days=2),
    ),
    Run(
        "bpmn.io: cold lead by the default flow",
        BPMN_IO,
        {"plan": "trial"},
        ["StartEvent_1", "Activity_1x0q6tb", "Gateway_0m2lx7c", "Event_1r7f5ow"],
        job_result={"lead_score": 3},
    ),
]


@pytest.mark.parametrize("run", RUNS, ids=lambda run: run.name)
async def test_a_modeler_export_is_saved_activated_and_runs_to_completion(
    wf: Stub, clock: ManualClock, run: Run
) -> None:
    bpmn = (FIXTURES / run.document).read_text(encoding="utf-8")
    workflow = await deploy(wf, bpmn, name=run.name)
    assert workflow.status == pb.WORKFLOW_STATUS_ACTIVE
    assert workflow.bpmn_xml == bpmn
    running = await start_execution(wf, workflow, **run.variables)
    if run.job_result is not None:
        [job] = [j for j in await jobs(wf, LEAD_SCORE) if j.execution_id == running.id]
        await wf.CompleteJob(
            pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct(run.job_result))
        )
    if run.timer is not None:
        await until_waiting_at(wf, running.id, run.path[-2])
        await advance(clock, seconds=run.timer.total_seconds() + 1)
    done = await until_status(wf, running.id, pb.EXECUTION_STATUS_COMPLETED)
    assert path(done) == run.path
    assert struct_to_dict(done.variables) == {
        **run.variables,
        **(run.job_result or {}),
        **run.outputs,
    }
