"""Multi-instance activities and the inclusive gateway through the service,
on PostgreSQL (issue 15): documents as Camunda Modeler 5 saves them, jobs
completed by a worker over gRPC, completions racing, and a restart of the
service half-way (every instance a token in PostgreSQL, done exactly once)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct, struct_to_dict
from services.workflows.service import DEFINITION, build_with
from tests.support import TRACER_PROVIDER, eventually, free_port, service_config
from tests.workflows.bpmn_docs import boundary, definitions, flow
from tests.workflows.bpmn_multi import around, diamond, job, marker
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    incident_of,
    jobs,
    path,
    refused,
    start,
    until_status,
    until_waiting_at,
)

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING


def job_type() -> str:
    return f"mi-{uuid.uuid4().hex[:8]}"


async def complete(wf: Stub, found: pb.ActivatedJob, **variables: Any) -> None:
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=found.job_key, variables=dict_to_struct(variables))
    )


def item_of(found: pb.ActivatedJob) -> Any:
    return struct_to_dict(found.variables)["item"]


# ---------------------------------------------------------------- inclusive gateway


async def test_the_inclusive_fork_takes_each_true_condition_and_the_join_waits_for_them(
    wf: Stub,
) -> None:
    kind = job_type()
    bpmn = diamond({"a": "=x > 1", "b": "=x > 2", "c": None}, default="c", task_type=kind)
    workflow = await deploy(wf, bpmn)
    for x, expected in ((3, ["a", "b"]), (2, ["a"]), (0, ["c"])):
        started = await start(wf, workflow, x=x)
        await until_waiting_at(wf, started.id, *expected)
        found = [j for j in await jobs(wf, kind) if j.execution_id == started.id]
        assert sorted(j.element_id for j in found) == expected
        for each in found[:-1]:
            await complete(wf, each)
        if len(found) > 1:  # the join holds the first branch for the other
            await until_waiting_at(wf, started.id, found[-1].element_id, "join")
        await complete(wf, found[-1])
        done = await until_status(wf, started.id, COMPLETED)
        assert path(done).count("join") == 1


async def test_no_true_condition_without_a_default_is_an_incident(wf: Stub) -> None:
    workflow = await deploy(wf, diamond({"a": "=x > 1", "b": "=x > 2"}, task_type=job_type()))
    started = await start(wf, workflow, x=0)
    incident = await incident_of(wf, started.id)
    assert incident.element_id == "fork"
    assert "no condition of an outgoing flow is true" in incident.error_message


async def test_the_join_does_not_wait_for_a_branch_that_ended_elsewhere(wf: Stub) -> None:
    kind = job_type()
    bpmn = diamond({"a": "=true", "b": "=true"}, task_type=kind).replace(
        '<bpmn:sequenceFlow id="from_b" sourceRef="b" targetRef="join"/>',
        '<bpmn:sequenceFlow id="from_b" sourceRef="b" targetRef="alone"/>'
        '<bpmn:endEvent id="alone"/>',
    )
    started = await start(wf, await deploy(wf, bpmn))
    found = {j.element_id: j for j in await jobs(wf, kind) if j.execution_id == started.id}
    # b can never reach the join: a's token passes it at once.
    await complete(wf, found["a"])
    await until_waiting_at(wf, started.id, "b")
    await complete(wf, found["b"])
    done = await until_status(wf, started.id, COMPLETED)
    assert path(done)[-1] == "alone"


async def test_branches_completing_at_once_pass_the_join_once(wf: Stub) -> None:
    kind = job_type()
    bpmn = diamond({"a": "=true", "b": "=true", "c": "=true"}, task_type=kind)
    workflow = await deploy(wf, bpmn)
    started = [await start(wf, workflow) for _ in range(5)]
    found = await jobs(wf, kind, count=15)
    assert len(found) == 15
    # Every branch's job completed twice at once, across the five executions.
    outcomes = await asyncio.gather(
        *(complete(wf, each) for each in found + found), return_exceptions=True
    )
    assert sum(isinstance(o, grpc.aio.AioRpcError) for o in outcomes) == 15
    for each in started:
        done = await until_status(wf, each.id, COMPLETED)
        assert path(done).count("join") == 1 and path(done).count("end") == 1


async def test_a_join_holding_a_branch_survives_a_restart(wf_env: dict[str, str]) -> None:
    env = {**wf_env, "LIFECYCLE_WORKFLOWS_PORT": str(free_port())}
    definition = replace(DEFINITION, build=build_with(ManualClock()))
    kind = job_type()
    bpmn = diamond({"a": "=true", "b": "=true"}, task_type=kind)
    host = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            started = await start(stub, await deploy(stub, bpmn))
            found = {j.element_id: j for j in await jobs(stub, kind, count=2)}
            await complete(stub, found["a"])
            await until_waiting_at(stub, started.id, "b", "join")
    finally:
        await host.stop()
    host = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            await complete(stub, found["b"])
            done = await until_status(stub, started.id, COMPLETED)
    finally:
        await host.stop()
    assert path(done).count("join") == 1


# ---------------------------------------------------------------- multi-instance


async def test_parallel_and_sequential_instances_collect_outputs_in_input_order(wf: Stub) -> None:
    for sequential in (False, True):
        kind = job_type()
        multi = marker("=items", sequential=sequential, output=("results", "=result"))
        workflow = await deploy(wf, around(job("work", kind, multi), "work"))
        started = await start(wf, workflow, items=["a", "b", "c"])
        seen: list[int] = []
        while len(seen) < 3:
            found = [j for j in await jobs(wf, kind) if j.execution_id == started.id]
            assert len(found) == (1 if sequential else 3 - len(seen))
            for each in reversed(found):  # completed in reverse order
                variables = struct_to_dict(each.variables)
                seen.append(variables["loopCounter"])
                await complete(wf, each, result=variables["item"].upper())
                if sequential:
                    break
        done = await until_status(wf, started.id, COMPLETED)
        assert struct_to_dict(done.variables) == {
            "items": ["a", "b", "c"],
            "results": ["A", "B", "C"],
        }
        assert seen == ([1, 2, 3] if sequential else [3, 2, 1])
        assert path(done) == ["start", "work", "work", "work", "work", "end"]


async def test_the_completion_condition_cuts_the_others_short(wf: Stub) -> None:
    kind = job_type()
    multi = marker("=items", output=("results", "=result"), completion="=result == 'found'")
    started = await start(
        wf, await deploy(wf, around(job("work", kind, multi), "work")), items=[1, 2, 3]
    )
    found = sorted(await jobs(wf, kind), key=item_of)
    await complete(wf, found[0], result="no")
    await complete(wf, found[1], result="found")
    done = await until_status(wf, started.id, COMPLETED)
    assert struct_to_dict(done.variables)["results"] == ["no", "found", None]
    assert path(done, "terminated") == ["work"]
    error = await _rpc_error(complete(wf, found[2], result="late"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def _rpc_error(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


async def test_an_empty_collection_completes_and_a_bad_one_is_an_incident(wf: Stub) -> None:
    workflow = await deploy(
        wf, around(job("work", job_type(), marker("=items", output=("out", "=result"))), "work")
    )
    done = await start(wf, workflow, items=[])
    assert done.status == COMPLETED
    assert struct_to_dict(done.variables)["out"] == []
    for items, expected in (
        ({"a": 1}, "gave a map, not a list"),
        (list(range(10_001)), "has 10,001 elements, more than the limit of 10,000 instances"),
    ):
        started = await start(wf, workflow, items=items)
        incident = await incident_of(wf, started.id)
        assert incident.element_id == "work"
        assert expected in incident.error_message


async def test_markers_the_engine_cannot_run_are_refused_at_save(wf: Stub) -> None:
    loop = job("work", "x", "<bpmn:standardLoopCharacteristics/>")
    assert "'work': loop markers" in await refused(wf, around(loop, "work"))
    no_collection = job("work", "x", "<bpmn:multiInstanceLoopCharacteristics/>")
    assert "needs zeebe:loopCharacteristics" in await refused(wf, around(no_collection, "work"))


async def test_a_multi_instance_sub_process_runs_each_instance_with_its_element(
    wf: Stub,
) -> None:
    kind = job_type()
    sub = (
        '<bpmn:subProcess id="sub"><bpmn:startEvent id="s"/>'
        + job("inner", kind)
        + '<bpmn:endEvent id="e"/>'
        + flow("g1", "s", "inner")
        + flow("g2", "inner", "e")
        + marker("=items", output=("doubled", "=item * 2"))
        + "</bpmn:subProcess>"
    )
    started = await start(wf, await deploy(wf, around(sub, "sub")), items=[5, 6])
    found = sorted(await jobs(wf, kind), key=item_of)
    assert [struct_to_dict(j.variables)["loopCounter"] for j in found] == [1, 2]
    for each in found:
        await complete(wf, each)
    done = await until_status(wf, started.id, COMPLETED)
    assert struct_to_dict(done.variables) == {"items": [5, 6], "doubled": [10, 12]}


async def test_a_multi_instance_call_activity_calls_once_per_element(wf: Stub) -> None:
    kind = job_type()
    output = '<zeebe:ioMapping><zeebe:output source="=item * 10" target="got"/></zeebe:ioMapping>'
    child = await deploy(wf, around(job("child_work", kind, extra=output), "child_work"))
    call = (
        '<bpmn:callActivity id="call"><bpmn:extensionElements>'
        f'<zeebe:calledElement processId="{child.id}" propagateAllChildVariables="true"/>'
        "</bpmn:extensionElements>"
        + marker("=items", output=("got_all", "=got"))
        + "</bpmn:callActivity>"
    )
    started = await start(wf, await deploy(wf, around(call, "call")), items=[1, 2, 3])
    found: list[pb.ActivatedJob] = []

    async def all_called() -> bool:
        found.extend(await jobs(wf, kind, wait=0.1))
        return len(found) == 3

    await eventually(all_called)
    # Each child got its instance's element and counter.
    assert sorted((item_of(j), struct_to_dict(j.variables)["loopCounter"]) for j in found) == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]
    for each in found:
        await complete(wf, each)
    done = await until_status(wf, started.id, COMPLETED)
    variables = struct_to_dict(done.variables)
    assert variables["got_all"] == [10, 20, 30]
    assert "loopCounter" not in variables and "item" not in variables


async def test_an_interrupting_boundary_timer_ends_every_instance(
    wf: Stub, clock: ManualClock
) -> None:
    kind = job_type()
    bpmn = definitions(
        '<bpmn:startEvent id="start"/>',
        job("work", kind, marker("=items")),
        boundary("late", "work", duration="PT1H"),
        '<bpmn:endEvent id="end"/>',
        '<bpmn:endEvent id="too_late"/>',
        flow("f1", "start", "work"),
        flow("f2", "work", "end"),
        flow("f3", "late", "too_late"),
    )
    started = await start(wf, await deploy(wf, bpmn), items=[1, 2, 3])
    found = await jobs(wf, kind)
    await complete(wf, found[0])
    await advance(clock, hours=1, seconds=1)
    done = await until_status(wf, started.id, COMPLETED)
    assert path(done)[-2:] == ["late", "too_late"]
    assert path(done, "terminated").count("work") == 3  # two instances and the body
    for each in found[1:]:
        error = await _rpc_error(complete(wf, each))
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_racing_completions_collect_each_output_exactly_once(wf: Stub) -> None:
    kind = job_type()
    multi = marker("=items", output=("results", "=result"))
    items = list(range(40))
    started = await start(
        wf, await deploy(wf, around(job("work", kind, multi), "work")), items=items
    )
    found = await jobs(wf, kind, count=40)
    assert len(found) == 40
    # Every job completed twice at once: one of each pair wins.
    outcomes = await asyncio.gather(
        *(complete(wf, each, result=item_of(each) * 2) for each in found + found),
        return_exceptions=True,
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 40
    assert all(isinstance(f, grpc.aio.AioRpcError) for f in failures)
    done = await until_status(wf, started.id, COMPLETED)
    assert struct_to_dict(done.variables)["results"] == [n * 2 for n in items]
    assert path(done).count("work") == 41


async def test_a_restart_half_way_resumes_exactly_once(
    wf_env: dict[str, str], admin: asyncpg.Connection
) -> None:
    env = {**wf_env, "LIFECYCLE_WORKFLOWS_PORT": str(free_port())}
    definition = replace(DEFINITION, build=build_with(ManualClock()))
    kind = job_type()
    multi = marker("=items", sequential=False, output=("results", "=result"))
    host = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await deploy(stub, around(job("work", kind, multi), "work"))
            started = await start(stub, workflow, items=list(range(10)))
            found = sorted(await jobs(stub, kind, count=10), key=item_of)
            for each in found[:5]:
                await complete(stub, each, result=item_of(each))
    finally:
        await host.stop()
    host = ServiceHost(definition, service_config("workflows", env), TRACER_PROVIDER)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            assert (await execution(stub, started.id)).status == RUNNING
            for each in found[:5]:  # done before the restart: not again
                error = await _rpc_error(complete(stub, each, result=-1))
                assert error.code() == grpc.StatusCode.NOT_FOUND
            for each in found[5:]:
                await complete(stub, each, result=item_of(each))
            done = await until_status(stub, started.id, COMPLETED)
    finally:
        await host.stop()
    assert struct_to_dict(done.variables)["results"] == list(range(10))
    tokens = await admin.fetchval(
        "SELECT count(*) FROM workflows.execution_tokens WHERE execution_id = $1",
        uuid.UUID(started.id),
    )
    assert tokens == 0
