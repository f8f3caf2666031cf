"""What user input can make deep or large stays bounded: such an execution
fails with a message (whichever step makes it too large: a request's, a
timer's), a document nested deeper than the limit is refused, and one at the
limit runs."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import struct_to_dict
from services.workflows.bpmn import MAX_NESTING, BpmnError, parse
from services.workflows.domain import MAX_VARIABLES_BYTES
from services.workflows.expressions import MAX_VALUE_DEPTH
from tests.support import rpc_error, violated_fields
from tests.workflows.bpmn_docs import (
    call,
    catch,
    chain,
    definitions,
    end,
    flow,
    linear,
    parallel,
    start,
    subprocess,
    with_output,
    xor,
)
from tests.workflows.conftest import (
    Stub,
    advance,
    deploy,
    execution,
    path,
    publish,
    until_status,
)
from tests.workflows.conftest import start as start_execution


def growing(output: str) -> str:
    """A loop that sets `grown` by `output` on each turn until it is 200 turns old."""
    return definitions(
        start(),
        with_output(xor("grow", default="out"), "grown", output),
        with_output(xor("count", default="again"), "turns", "=turns + 1"),
        end(),
        flow("in", "start", "count"),
        flow("again", "count", "grow"),
        flow("out", "grow", "end"),
        flow("back", "grow", "count", "turns < 200"),
    )


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("=[grown]", f"gave a value nested more than {MAX_VALUE_DEPTH} levels deep"),
        ("=grown + grown", f"would exceed {MAX_VARIABLES_BYTES} bytes"),
    ],
)
async def test_an_output_that_grows_without_bound_fails_the_execution(
    wf: Stub, output: str, reason: str
) -> None:
    seed: list[object] | str = [] if output.startswith("=[") else "x" * 1000
    failed = await start_execution(wf, await deploy(wf, growing(output)), grown=seed, turns=0)
    assert failed.status == pb.EXECUTION_STATUS_FAILED, failed
    assert "'grow'" in failed.error_message and reason in failed.error_message


def nested(levels: int, message: str) -> str:
    """Sub-processes each inside the one before; the innermost waits for `message`."""
    body = [start("s0"), catch("deepest", message=message), end("e0")]
    body += chain("s0", "deepest", "e0", prefix="i0_")
    for level in range(1, levels + 1):
        ids = (f"s{level}", f"sub{level}", f"e{level}")
        body = [
            start(ids[0]),
            subprocess(ids[1], *body),
            end(ids[2]),
            *chain(*ids, prefix=f"i{level}_"),
        ]
    return definitions(*body)


async def test_sub_processes_nested_to_the_limit_run_and_cancel(wf: Stub) -> None:
    message = f"deep_{uuid.uuid4().hex[:8]}"
    with pytest.raises(BpmnError):
        parse(nested(MAX_NESTING + 1, message), 1 << 20)
    workflow = await deploy(wf, nested(MAX_NESTING, message))
    scopes = [f"sub{level}" for level in range(1, MAX_NESTING + 1)]
    waiting = await start_execution(wf, workflow)
    assert sorted(waiting.current_node_ids) == sorted(["deepest", *scopes])
    cancelled = await start_execution(wf, workflow)

    assert (await publish(wf, message, waiting.user_id)).delivered_count == 1
    done = await execution(wf, waiting.id)
    assert done.status == pb.EXECUTION_STATUS_COMPLETED
    assert path(done).count("deepest") == 1 and path(done)[-1] == f"e{MAX_NESTING}"
    reply = await wf.CancelExecution(pb.CancelExecutionRequest(execution_id=cancelled.id))
    assert reply.execution.status == pb.EXECUTION_STATUS_CANCELLED
    assert sorted(path(reply.execution, "terminated")) == sorted(["deepest", *scopes])


async def test_variables_nested_deeper_than_the_limit_are_refused(wf: Stub) -> None:
    workflow = await deploy(wf, linear(start(), catch("wait", message="never"), end()))
    deepest: object = "bottom"
    for _ in range(MAX_VALUE_DEPTH):
        deepest = {"in": deepest}
    running = await start_execution(wf, workflow, deep=deepest)
    assert struct_to_dict((await execution(wf, running.id)).variables) == {"deep": deepest}
    error = await rpc_error(start_execution(wf, workflow, deep=[deepest]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["variables"]


async def test_a_message_that_would_make_the_variables_too_large_is_refused(wf: Stub) -> None:
    name = f"big_{uuid.uuid4().hex[:8]}"
    workflow = await deploy(wf, linear(start(), catch("wait", message=name), end()))
    half = "x" * (MAX_VARIABLES_BYTES // 2)
    running = await start_execution(wf, workflow, first=half)
    error = await rpc_error(publish(wf, name, running.user_id, second=half))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["variables"]
    assert list((await execution(wf, running.id)).current_node_ids) == ["wait"]


async def test_a_called_execution_whose_variables_overflow_its_caller_fails_the_caller(
    wf: Stub, clock: ManualClock
) -> None:
    child = await deploy(wf, linear(start(), catch("wait", duration="PT1H"), end()), name="child")
    grown = f"grown_{uuid.uuid4().hex[:8]}"
    caller = definitions(
        start(),
        parallel("fork"),
        call("call", child.id),
        catch("grow", message=grown),
        parallel("join"),
        end(),
        *chain("start", "fork", "call", "join", "end"),
        flow("g1", "fork", "grow"),
        flow("g2", "grow", "join"),
    )
    half = "x" * (MAX_VARIABLES_BYTES // 2)
    running = await start_execution(wf, await deploy(wf, caller), seed=half)
    # The caller lets go of what it gave the child and takes as much again.
    sent = await publish(wf, grown, running.user_id, seed="", more=half)
    assert sent.delivered_count == 1
    later = await start_execution(
        wf, await deploy(wf, linear(start(), catch("later", duration="PT2H"), end()))
    )

    # The timer worker completes the child, whose variables the caller cannot take.
    await advance(clock, hours=1, seconds=1)
    failed = await until_status(wf, running.id, pb.EXECUTION_STATUS_FAILED)
    assert failed.error_message.startswith("the called execution's variables of 'call':")
    assert f"would exceed {MAX_VARIABLES_BYTES} bytes" in failed.error_message
    children = await wf.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=child.id, user_id=running.user_id)
    )
    assert [c.status for c in children.executions] == [pb.EXECUTION_STATUS_COMPLETED]
    await advance(clock, hours=1)
    await until_status(wf, later.id, pb.EXECUTION_STATUS_COMPLETED)
