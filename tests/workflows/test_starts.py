"""Starts that arrive together are written in one transaction (group commit),
with the same answers each would get alone."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import asyncpg
import grpc

from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.support import SPANS, error_info
from tests.workflows.bpmn_docs import catch, end, linear, start
from tests.workflows.conftest import Stub, deploy

WAITING = linear(start(), catch("wait", message="never"), end())
USE_EXISTING, ALLOW_PARALLEL = pb.CONFLICT_POLICY_USE_EXISTING, pb.CONFLICT_POLICY_ALLOW_PARALLEL


def request(workflow_id: str, user: str, **fields: object) -> pb.StartExecutionRequest:
    return pb.StartExecutionRequest(workflow_id=workflow_id, user_id=user, **fields)  # type: ignore[arg-type]


async def outcome(stub: Stub, call: pb.StartExecutionRequest) -> tuple[str, str, bool]:
    """(status or error reason, execution id, existing)."""
    try:
        reply = await stub.StartExecution(call)
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason or error.code().name, "", False
    return "OK", reply.execution.id, reply.existing


async def test_concurrent_starts_batch_and_answer_as_if_each_ran_alone(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    workflow = (await deploy(wf, WAITING, name="batched")).id
    stopped = (await deploy(wf, WAITING, name="stopped")).id
    await wf.DeactivateWorkflow(pb.DeactivateWorkflowRequest(workflow_id=stopped))
    erased = str(uuid.uuid4())
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=erased))
    twin_id, twice, parallel, existing = (str(uuid.uuid4()) for _ in range(4))
    key = str(uuid.uuid4())
    crowd = [request(workflow, str(uuid.uuid4())) for _ in range(150)]
    special = [
        request(workflow, twin_id, request_id=key),
        request(workflow, twin_id, request_id=key),
        request(workflow, twice),
        request(workflow, twice),
        request(workflow, existing, conflict_policy=USE_EXISTING),
        request(workflow, existing, conflict_policy=USE_EXISTING),
        request(workflow, parallel, conflict_policy=ALLOW_PARALLEL),
        request(workflow, parallel, conflict_policy=ALLOW_PARALLEL),
        request(stopped, str(uuid.uuid4())),
        request(workflow, erased),
        request(str(uuid.uuid4()), str(uuid.uuid4())),
    ]
    seen = len(SPANS.get_finished_spans())
    calls = crowd[:75] + special + crowd[75:]
    results = await asyncio.gather(*(outcome(wf, call) for call in calls))
    answers = dict(zip(map(id, calls), results, strict=True))

    assert all(answers[id(call)][0] == "OK" for call in crowd)
    keyed = sorted((answers[id(c)] for c in special[0:2]), key=lambda a: a[2])
    assert [a[2] for a in keyed] == [False, True] and keyed[0][1] == keyed[1][1]
    assert sorted(answers[id(c)][0] for c in special[2:4]) == ["EXECUTION_RUNNING", "OK"]
    same = {answers[id(c)][1] for c in special[4:6]}
    assert len(same) == 1 and sorted(answers[id(c)][2] for c in special[4:6]) == [False, True]
    assert len({answers[id(c)][1] for c in special[6:8]}) == 2
    assert [answers[id(c)][0] for c in special[8:]] == [
        "WORKFLOW_NOT_ACTIVE", "USER_ERASED", "WORKFLOW_NOT_FOUND",
    ]  # fmt: skip

    rows = await admin.fetch(
        "SELECT user_id FROM workflows.workflow_executions WHERE workflow_id = $1",
        uuid.UUID(workflow),
    )
    per_user = Counter(str(row["user_id"]) for row in rows)
    assert per_user[twin_id] == per_user[twice] == per_user[existing] == 1
    assert per_user[parallel] == 2 and per_user[erased] == 0
    assert len(rows) == len(crowd) + 5
    batches = [
        int(str((span.attributes or {}).get("batch.size")))
        for span in SPANS.get_finished_spans()[seen:]
        if span.name == "StartExecution batch"
    ]
    assert max(batches) > 1, "the calls never met in a batch"


def result_of(result: pb.StartExecutionResult) -> tuple[str, str, bool]:
    """As `outcome`: (status or error reason, execution id, existing)."""
    if result.HasField("error"):
        return result.error.reason, "", False
    return "OK", result.execution.id, result.existing


async def test_start_executions_answers_each_start_as_start_execution_would(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    workflow = (await deploy(wf, WAITING, name="bulk")).id
    stopped = (await deploy(wf, WAITING, name="bulk stopped")).id
    await wf.DeactivateWorkflow(pb.DeactivateWorkflowRequest(workflow_id=stopped))
    erased, twice, existing, replayed = (str(uuid.uuid4()) for _ in range(4))
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=erased))
    key = str(uuid.uuid4())
    alone = await wf.StartExecution(request(workflow, replayed, request_id=key))
    crowd = [request(workflow, str(uuid.uuid4())) for _ in range(100)]
    bad_variables = request(workflow, str(uuid.uuid4()))
    bad_variables.variables.fields["note"].string_value = "nul \x00 here"
    special = [
        request(workflow, replayed, request_id=key),
        request(workflow, twice),
        request(workflow, twice),
        request(workflow, existing, conflict_policy=USE_EXISTING),
        request(workflow, existing, conflict_policy=USE_EXISTING),
        request(stopped, str(uuid.uuid4())),
        request(workflow, erased),
        request(str(uuid.uuid4()), str(uuid.uuid4())),
        request(workflow, "not-a-uuid"),
        bad_variables,
        request(workflow, str(uuid.uuid4()), conflict_policy=9),
    ]
    reply = await wf.StartExecutions(
        pb.StartExecutionsRequest(starts=crowd[:50] + special + crowd[50:])
    )

    results = list(reply.results)
    assert len(results) == len(crowd) + len(special)
    answers = [result_of(r) for r in results[50 : 50 + len(special)]]
    crowd_results = results[:50] + results[50 + len(special) :]
    assert all(result_of(r)[0] == "OK" for r in crowd_results)
    assert [r.execution.user_id for r in crowd_results] == [c.user_id for c in crowd]
    assert answers[0] == ("OK", alone.execution.id, True)
    assert sorted(a[0] for a in answers[1:3]) == ["EXECUTION_RUNNING", "OK"]
    assert len({a[1] for a in answers[3:5]}) == 1
    assert sorted(a[2] for a in answers[3:5]) == [False, True]
    assert [a[0] for a in answers[5:8]] == [
        "WORKFLOW_NOT_ACTIVE", "USER_ERASED", "WORKFLOW_NOT_FOUND",
    ]  # fmt: skip
    invalid = [results[50 + n].error for n in (8, 9, 10)]
    assert [(e.code, e.field) for e in invalid] == [
        ("INVALID_ARGUMENT", "user_id"),
        ("INVALID_ARGUMENT", "variables.note"),
        ("INVALID_ARGUMENT", "conflict_policy"),
    ]
    assert results[50 + 5].error.code == "FAILED_PRECONDITION"
    assert results[50 + 7].error.code == "NOT_FOUND"

    rows = await admin.fetch(
        "SELECT user_id FROM workflows.workflow_executions WHERE workflow_id = $1",
        uuid.UUID(workflow),
    )
    per_user = Counter(str(row["user_id"]) for row in rows)
    assert per_user[replayed] == per_user[twice] == per_user[existing] == 1
    assert per_user[erased] == 0
    assert len(rows) == len(crowd) + 3


async def test_start_executions_takes_one_to_500_starts(wf: Stub) -> None:
    workflow = (await deploy(wf, WAITING, name="bulk limits")).id
    too_many = [request(workflow, str(uuid.uuid4())) for _ in range(501)]
    for starts in ([], too_many):
        try:
            await wf.StartExecutions(pb.StartExecutionsRequest(starts=starts))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "starts: must hold 1 to 500 starts" in str(error.details())
        else:
            raise AssertionError(f"{len(starts)} starts were taken")
