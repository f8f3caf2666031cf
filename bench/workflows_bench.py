"""Workflows service speed, beside limits measured in the same run.

    python -m bench.workflows_bench [--calls 5000] [--concurrency 64] [--timers 10000]
                                    [--instances 2000]

- in-process engine: instances per second of one BPMN (a fork, a join, a
  gateway, six service tasks completed by an in-memory worker), ours against
  SpiffWorkflow 3.x running the same document (target: at least 10x);
- in-process engine, a second BPMN: an inclusive fork and join (two of three
  branches taken) then a parallel multi-instance service task over 100 items
  (each instance's job completed by the in-memory worker, the outputs
  collected), ours against SpiffWorkflow on the same document, and our time
  per item at 100 and at 1,000 items (flat when a step's cost is linear);
- through gRPC with persistence: StartExecution of a 5-node workflow (start,
  exclusive gateway, one built-in service task, merging exclusive gateway,
  end; every call runs all five) beside an empty grpc.aio call (target: 1,000
  executions/s). The built-in task is lifecycle.emit_event, which the engine
  does inside the step's transaction (an outbox row), so the call returns the
  execution completed; set_stage and update_attributes, done by a job worker
  calling the users service, are not measured here;
- timer lateness: executions whose timers come due spread over one minute,
  fired by the service process; lateness is from the due time to the commit
  of the step that fired the timer (a deferred trigger the benchmark adds to
  its own database records the commit moment; client, service and PostgreSQL
  must share a clock), and a timer that never fired counts as infinitely late
  (target: p99 under 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.harness import Measurement, closed_loop, scratch_database, server_url
from bench.users_bench import measure_empty, process
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.structs import dict_to_struct
from tests.support import free_port
from tests.workflows.bpmn_docs import catch, emit, end, flow, linear, start, xor
from tests.workflows.bpmn_docs import definitions as document
from tests.workflows.drivers import our_graph, run_ours, run_spiff, same_run, spiff_spec
from tests.workflows.test_differential import FORK_JOIN, INCLUSIVE_MULTI, counting_worker

BUILTIN_TASK = "lifecycle.emit_event"
FIVE_NODES = document(
    start(),
    xor("plan", default="self_serve"),
    emit("welcome", event="welcome"),
    xor("merge"),
    end(),
    flow("f1", "start", "plan"),
    flow("team", "plan", "welcome", "seats > 1"),
    flow("self_serve", "plan", "merge"),
    flow("f2", "welcome", "merge"),
    flow("f3", "merge", "end"),
)
# The path every call takes with the benchmark's variables.
FIVE_NODE_PATH = ["start", "plan", "welcome", "merge", "end"]
WARM_UP_CALLS = 500
TIMER = linear(start(), catch("wait", date="=due"), end())
# When each execution's completion commits: a deferred trigger runs at commit.
COMMIT_RECORDER = """
CREATE SCHEMA bench;
CREATE TABLE bench.completed (execution_id uuid PRIMARY KEY, committed_at timestamptz NOT NULL);
CREATE FUNCTION bench.record_completed() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO bench.completed VALUES (NEW.id, clock_timestamp()) ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_record_completed
  AFTER INSERT OR UPDATE ON workflows.workflow_executions
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'completed')
  EXECUTE FUNCTION bench.record_completed();
"""
# How long after the last due time the benchmark waits for timers still unfired.
TIMER_GRACE = timedelta(seconds=60)


def in_process(instances: int) -> tuple[float, float]:
    """Instances per second: (ours, SpiffWorkflow's)."""
    graph, spec = our_graph(FORK_JOIN), spiff_spec(FORK_JOIN, "forkjoin")
    variables = {"score": 8}
    assert same_run(
        graph,
        run_ours(graph, variables, counting_worker),
        run_spiff(spec, variables, counting_worker),
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


MULTI_ITEMS = 100
# The same model over ten times the items: the time per item should stay flat.
MULTI_ITEMS_LARGE = 1000


def in_process_multi(instances: int) -> tuple[float, float]:
    """Instances per second of INCLUSIVE_MULTI with 100 items: (ours, SpiffWorkflow's)."""
    graph, spec = our_graph(INCLUSIVE_MULTI), spiff_spec(INCLUSIVE_MULTI, "inclusive_multi")
    variables = {"score": 7, "items": list(range(MULTI_ITEMS))}
    ours_run = run_ours(graph, variables, counting_worker)
    assert same_run(graph, ours_run, run_spiff(spec, variables, counting_worker))
    assert ours_run[1].count("each") == MULTI_ITEMS + 1
    count = max(20, instances // 20)
    started = time.perf_counter()
    for n in range(count):
        run_ours(graph, {**variables, "score": n % 10}, counting_worker)
    ours = count / (time.perf_counter() - started)
    fewer = max(5, count // 20)
    started = time.perf_counter()
    for n in range(fewer):
        run_spiff(spec, {**variables, "score": n % 10}, counting_worker)
    return ours, fewer / (time.perf_counter() - started)


def multi_per_item(items: int, runs: int) -> float:
    """Microseconds per item of one INCLUSIVE_MULTI instance over `items` items (ours)."""
    graph = our_graph(INCLUSIVE_MULTI)
    variables = {"score": 7, "items": list(range(items))}
    started = time.perf_counter()
    for _ in range(runs):
        status, _completed = run_ours(graph, variables, counting_worker)
        assert status == "completed"
    return (time.perf_counter() - started) / runs / items * 1e6


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
            completed = [h.element_id for h in reply.execution.history if h.state == "completed"]
            assert completed == FIVE_NODE_PATH, completed
            return reply

        await closed_loop("warm-up", run, min(WARM_UP_CALLS, calls), concurrency)
        return await closed_loop("StartExecution to completion", run, calls, concurrency)


async def measure_timers(database_url: str, timers: int, concurrency: int) -> list[float]:
    """Lateness in seconds of `timers` timers due spread over one minute, from
    the due time to the commit that fired each; infinite for one never fired."""
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(COMMIT_RECORDER)
        async with workflows_service(database_url) as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            workflow_id = uuid.UUID(await deploy(stub, TIMER))
            first_due = datetime.now(UTC) + timedelta(seconds=5 + timers / 400)

            async def schedule(n: int) -> object:
                due = first_due + timedelta(seconds=60 * n / timers)
                return await stub.StartExecution(
                    pb.StartExecutionRequest(
                        workflow_id=str(workflow_id),
                        user_id=str(uuid.uuid4()),
                        variables=dict_to_struct({"due": due.isoformat()}),
                    )
                )

            await closed_loop("schedule", schedule, timers, concurrency)
            if datetime.now(UTC) > first_due:
                print("warning: scheduling took longer than planned; early timers are late")
            give_up = first_due + timedelta(seconds=60) + TIMER_GRACE
            while datetime.now(UTC) < give_up:
                waiting = await admin.fetchval(
                    "SELECT count(*) FROM workflows.workflow_executions"
                    " WHERE workflow_id = $1 AND status <> 'completed'",
                    workflow_id,
                )
                if not waiting:
                    break
                await asyncio.sleep(0.5)
        rows = await admin.fetch(
            "SELECT extract(epoch FROM c.committed_at - (e.variables->>'due')::timestamptz)"
            " AS late FROM workflows.workflow_executions e"
            " LEFT JOIN bench.completed c ON c.execution_id = e.id WHERE e.workflow_id = $1",
            workflow_id,
        )
    finally:
        await admin.close()
    assert len(rows) == timers, f"{len(rows)} executions for {timers} timers"
    return sorted(math.inf if r["late"] is None else float(r["late"]) for r in rows)


async def main(calls: int, concurrency: int, timers: int, instances: int) -> None:
    ours, spiff = in_process(instances)
    multi_ours, multi_spiff = in_process_multi(instances)
    small = multi_per_item(MULTI_ITEMS, max(20, instances // 20))
    large = multi_per_item(MULTI_ITEMS_LARGE, max(2, instances // 200))
    with server_url() as url:
        async with scratch_database(url) as database_url:
            empty = await measure_empty("empty unary call (limit)", calls, concurrency, None)
            executions = await measure_executions(database_url, calls, concurrency)
            lateness = await measure_timers(database_url, timers, concurrency)
    print("workflows service:")
    print(
        f"  StartExecution runs a 5-node workflow ({' -> '.join(FIVE_NODE_PATH)}), all five"
        f" nodes on every call, with one built-in service task: {BUILTIN_TASK} ('welcome'),"
        " done inside the step's transaction"
    )
    print(f"{'in-process, ours':<28} {ours:10.0f} instances/s")
    print(f"{'in-process, SpiffWorkflow':<28} {spiff:10.0f} instances/s")
    print(f"{'':<28} {ours / spiff:10.1f}x SpiffWorkflow  (target >= 10x)")
    print(
        f"  second BPMN: inclusive fork and join, then a parallel multi-instance service task"
        f" over {MULTI_ITEMS} items"
    )
    print(f"{'in-process MI, ours':<28} {multi_ours:10.1f} instances/s")
    print(f"{'in-process MI, SpiffWorkflow':<28} {multi_spiff:10.1f} instances/s")
    print(f"{'':<28} {multi_ours / multi_spiff:10.1f}x SpiffWorkflow")
    print(
        f"{'in-process MI, per item':<28} {small:10.1f} us at {MULTI_ITEMS} items,"
        f" {large:.1f} us at {MULTI_ITEMS_LARGE:,} items ({large / small:.2f}x; flat is linear)"
    )
    print(empty.line())
    print(executions.line(empty), "  (target >= 1000/s)")
    p99 = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
    unfired = sum(1 for late in lateness if math.isinf(late))
    print(
        f"{'timer lateness':<28} {len(lateness)} timers in one minute, due to commit: p50"
        f" {lateness[len(lateness) // 2] * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"
        f"  max {lateness[-1] * 1000:6.1f} ms  (target p99 < 1 s)"
    )
    if unfired:
        print(f"  {unfired} timers never fired (counted as infinitely late)")


def positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not a positive number")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=positive, default=5000)
    parser.add_argument("--concurrency", type=positive, default=64)
    parser.add_argument("--timers", type=positive, default=10_000)
    parser.add_argument("--instances", type=positive, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.timers, args.instances))
