"""Workflows service speed, beside limits measured in the same run.

    python -m bench.workflows_bench [--calls 5000] [--concurrency 64] [--timers 10000]

- in-process engine: instances per second of one BPMN (a fork, a join, a
  gateway, six service tasks completed by an in-memory worker), ours against
  SpiffWorkflow 3.x running the same document (target: at least 10x);
- through gRPC with persistence: StartExecution of a 5-node workflow with one
  built-in service task (start, emit event, exclusive gateway, end), which runs
  to completion inside the call, beside an empty grpc.aio call
  (target: 1,000 executions/s);
- timer lateness: executions whose timers come due spread over one minute,
  fired by the service process; p99 lateness (target: under 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.harness import Measurement, closed_loop, scratch_database, server_url
from bench.users_bench import measure_empty, process
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.config import service_role, with_user
from runtime.structs import dict_to_struct
from tests.support import free_port
from tests.workflows.bpmn_docs import catch, emit, end, flow, linear, start, xor
from tests.workflows.bpmn_docs import definitions as document
from tests.workflows.drivers import our_graph, run_ours, run_spiff, spiff_spec
from tests.workflows.test_differential import FORK_JOIN, counting_worker

FIVE_NODES = document(
    start(),
    emit("welcome", event="welcome"),
    xor("plan", default="to_end"),
    emit("upsell", event="upsell"),
    end(),
    flow("f1", "start", "welcome"),
    flow("f2", "welcome", "plan"),
    flow("to_upsell", "plan", "upsell", "seats > 1000"),
    flow("to_end", "plan", "end"),
    flow("f3", "upsell", "end"),
)
TIMER = linear(start(), catch("wait", date="=due"), end())


def in_process(instances: int) -> tuple[float, float]:
    """Instances per second: (ours, SpiffWorkflow's)."""
    graph, spec = our_graph(FORK_JOIN), spiff_spec(FORK_JOIN, "forkjoin")
    variables = {"score": 8}
    assert run_ours(graph, variables, counting_worker) == run_spiff(
        spec, variables, counting_worker
    )
    started = time.perf_counter()
    for n in range(instances):
        run_ours(graph, {"score": n % 10}, counting_worker)
    ours = instances / (time.perf_counter() - started)
    fewer = max(50, instances // 20)
    started = time.perf_counter()
    for n in range(fewer):
        run_spiff(spec, {"score": n % 10}, counting_worker)
    return ours, fewer / (time.perf_counter() - started)


def workflows_service(database_url: str) -> Any:
    port = free_port()
    env = {
        "LIFECYCLE_DATABASE_URL": database_url,
        "LIFECYCLE_WORKFLOWS_PORT": str(port),
        "LIFECYCLE_LOG_LEVEL": "ERROR",
        "LIFECYCLE_DB_POOL_SIZE": "20",
    }
    return process(["-m", "suite.cli", "serve", "workflows"], env, port)


async def deploy(stub: Any, bpmn: str) -> str:
    created = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name="bench", bpmn_xml=bpmn))
    )
    await stub.ActivateWorkflow(pb.ActivateWorkflowRequest(workflow_id=created.workflow.id))
    return str(created.workflow.id)


async def measure_executions(database_url: str, calls: int, concurrency: int) -> Measurement:
    async with workflows_service(database_url) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        workflow_id = await deploy(stub, FIVE_NODES)
        variables = dict_to_struct({"seats": 3})

        async def run(n: int) -> object:
            reply = await stub.StartExecution(
                pb.StartExecutionRequest(
                    workflow_id=workflow_id, user_id=str(uuid.uuid4()), variables=variables
                )
            )
            assert reply.execution.status == pb.EXECUTION_STATUS_COMPLETED
            return reply

        await closed_loop("warm-up", run, 500, concurrency)
        return await closed_loop("StartExecution to completion", run, calls, concurrency)


async def measure_timers(database_url: str, timers: int, concurrency: int) -> list[float]:
    """Lateness in seconds of `timers` timers due spread over one minute."""
    async with workflows_service(database_url) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        workflow_id = await deploy(stub, TIMER)
        first_due = datetime.now(UTC) + timedelta(seconds=5 + timers / 400)

        async def schedule(n: int) -> object:
            due = first_due + timedelta(seconds=60 * n / timers)
            return await stub.StartExecution(
                pb.StartExecutionRequest(
                    workflow_id=workflow_id,
                    user_id=str(uuid.uuid4()),
                    variables=dict_to_struct({"due": due.isoformat()}),
                )
            )

        await closed_loop("schedule", schedule, timers, concurrency)
        if datetime.now(UTC) > first_due:
            print("warning: scheduling took longer than planned; early timers are late")
        conn = await asyncpg.connect(
            with_user(database_url, service_role(database_url, "workflows"))
        )
        try:
            for _ in range(1200):
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM workflows.workflow_executions"
                    " WHERE workflow_id = $1 AND status <> 'completed'",
                    uuid.UUID(workflow_id),
                )
                if not waiting:
                    break
                await asyncio.sleep(0.5)
            rows = await conn.fetch(
                "SELECT extract(epoch FROM h.at - (e.variables->>'due')::timestamptz) AS late"
                " FROM workflows.workflow_executions e JOIN workflows.execution_history h"
                " ON h.execution_id = e.id AND h.element_id = 'wait'"
                " WHERE e.workflow_id = $1",
                uuid.UUID(workflow_id),
            )
        finally:
            await conn.close()
        return sorted(float(r["late"]) for r in rows)


async def main(calls: int, concurrency: int, timers: int, instances: int) -> None:
    ours, spiff = in_process(instances)
    with server_url() as url:
        async with scratch_database(url) as database_url:
            empty = await measure_empty("empty unary call (limit)", calls, concurrency, None)
            executions = await measure_executions(database_url, calls, concurrency)
            lateness = await measure_timers(database_url, timers, concurrency)
    print("workflows service:")
    print(f"{'in-process, ours':<28} {ours:10.0f} instances/s")
    print(f"{'in-process, SpiffWorkflow':<28} {spiff:10.0f} instances/s")
    print(f"{'':<28} {ours / spiff:10.1f}x SpiffWorkflow  (target >= 10x)")
    print(empty.line())
    print(executions.line(empty), "  (target >= 1000/s)")
    p99 = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
    print(
        f"{'timer lateness':<28} {len(lateness)} timers in one minute: p50"
        f" {lateness[len(lateness) // 2] * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"
        f"  max {lateness[-1] * 1000:6.1f} ms  (target p99 < 1 s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.timers, args.instances))
