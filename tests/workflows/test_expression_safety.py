"""Issue 12 end to end: an expression can no longer hold the workflows
service's event loop, nor be saved when it calls what CEL does not define.
A costly expression is refused when saved; one whose cost depends on the data
is refused before it runs on too much of it, an incident; a loop with no wait
state whose turns are each cheap fails at the step's work budget; and health
checks and other clients' calls keep answering meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.server import ServiceHost
from services.workflows.cel_cost import STEP_BUDGET
from tests.workflows.bpmn_docs import definitions, emit, end, flow, linear, start, with_output, xor
from tests.workflows.conftest import Stub, deploy, execution, refused
from tests.workflows.conftest import start as start_execution
from tests.workflows.test_expression_rules import HOSTILE

# Quadratic twice over: on 300 items the CEL library takes over a second.
NESTED_MAP = "vars.items.map(a, vars.items.map(b, a + b)).size() > 0"
# The loop must answer each call within this while a costly expression comes in.
ANSWER_SECONDS = 0.1
# A loop with no wait state over 12,000 items: each turn cheap, the whole took 13 s.
TURNS = definitions(
    start(),
    xor("spin", default="out"),
    with_output(emit("tick"), "turns", "=turns + 1"),
    end(),
    flow("in", "start", "spin"),
    flow("again", "spin", "tick", "=turns < 4000"),
    flow("loop", "tick", "spin"),
    flow("out", "spin", "end"),
)


def gateway_on(condition: str) -> str:
    return definitions(
        start(),
        xor("check", default="otherwise"),
        emit("costly"),
        end("e1"),
        end("e2"),
        flow("f0", "start", "check"),
        flow("when", "check", "costly", condition),
        flow("otherwise", "check", "e2"),
        flow("f3", "costly", "e1"),
    )


async def test_the_costly_expression_of_the_issue_is_refused_when_saved(wf: Stub) -> None:
    details = await refused(wf, gateway_on(HOSTILE))
    assert "element 'when': expression would take about " in details
    assert f"steps, over the budget of {STEP_BUDGET:,}" in details


async def test_a_function_cel_does_not_define_is_refused_when_saved(wf: Stub) -> None:
    details = await refused(wf, gateway_on("__import__('os').system('x') == 0"))
    assert "element 'when': expression calls __import__()" in details


async def test_an_output_mapping_calling_an_unknown_function_names_its_element(wf: Stub) -> None:
    bpmn = linear(start(), with_output(emit("task"), "n", "=vars.tags.join(',')"), end())
    assert "element 'task': expression calls join()" in await refused(wf, bpmn)


async def test_a_data_dependent_expression_runs_on_little_data(wf: Stub) -> None:
    workflow = await deploy(wf, gateway_on(NESTED_MAP))
    done = await start_execution(wf, workflow, items=[1, 2, 3])
    assert done.status == pb.EXECUTION_STATUS_COMPLETED


async def test_costly_expressions_are_refused_while_the_service_keeps_answering(
    wf: Stub, wf_host: ServiceHost
) -> None:
    """The issue's expression, refused when saved, and a data-dependent one
    refused before it runs on too much data, while another client's health
    checks and calls go on."""
    workflow = await deploy(wf, gateway_on(NESTED_MAP))
    spinning = await deploy(wf, TURNS)
    async with grpc.aio.insecure_channel(wf_host.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        other = workflows_pb2_grpc.WorkflowServiceStub(channel)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10),
            lambda: other.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow.id), timeout=10),
        ]
        latencies, stop = [], asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                for call in calls:
                    started = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.002)

        prober = asyncio.create_task(probe())
        while len(latencies) < 4:
            await asyncio.sleep(0.005)
        try:
            refusals = [await refused(wf, gateway_on(HOSTILE)) for _ in range(2)]
            stuck = [await start_execution(wf, workflow, items=list(range(300))) for _ in range(3)]
            looped = await start_execution(wf, spinning, turns=0, items=list(range(12_000)))
        finally:
            stop.set()
            await prober
    assert len(latencies) >= 6
    assert max(latencies) < ANSWER_SECONDS, sorted(latencies)[-3:]
    assert all("element 'when': expression would take about " in r for r in refusals)
    assert looped.status == pb.EXECUTION_STATUS_FAILED
    assert "without reaching a wait state" in (await execution(wf, looped.id)).error_message
    for one in stuck:
        assert one.status == pb.EXECUTION_STATUS_RUNNING and list(one.current_node_ids) == ["check"]
        (incident,) = (await execution(wf, one.id)).incidents
        assert incident.element_id == "check"
        assert incident.error_message.startswith(f"{NESTED_MAP!r} was not evaluated: it would")
        assert f"steps, over the budget of {STEP_BUDGET:,}" in incident.error_message
