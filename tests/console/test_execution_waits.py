"""The execution page's "Waiting on now": the job (its lock, then its retries,
backoff and error) and the boundary timer of a real waiting execution, and
the message a seeded one waits for, every stored value escaped."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from lifecycle.workflows.v1 import workflows_pb2 as pb
from tests.console.conftest import IMAGE, SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.workflows import bpmn_docs as doc

if TYPE_CHECKING:
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub
else:
    WorkflowServiceAsyncStub = Any

WORKER = f"worker {IMAGE}"
ERROR = f"down {SCRIPT}"


def _shown(stamp: Timestamp) -> str:
    """A time as the console prints it."""
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


async def _job_with_a_deadline(workflows: WorkflowServiceAsyncStub) -> tuple[str, str]:
    """An execution at a service task with a one-hour boundary timer; its id and job type."""
    job_type = f"console-waits-{uuid.uuid4().hex[:8]}"
    document = doc.definitions(
        doc.start(),
        doc.service("work", job_type, retries=3),
        doc.boundary("late", "work", duration="PT1H"),
        doc.end(),
        doc.end("gave_up"),
        *doc.chain("start", "work", "end"),
        doc.flow("f_late", "late", "gave_up"),
    )
    created = await workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name="deadline", bpmn_xml=document))
    )
    await workflows.ActivateWorkflow(pb.ActivateWorkflowRequest(workflow_id=created.workflow.id))
    started = await workflows.StartExecution(
        pb.StartExecutionRequest(workflow_id=created.workflow.id, user_id=str(uuid.uuid4()))
    )
    return started.execution.id, job_type


async def _activate(workflows: WorkflowServiceAsyncStub, job_type: str) -> pb.ActivatedJob:
    request = pb.ActivateJobsRequest(
        job_type=job_type,
        worker=WORKER,
        max_jobs_to_activate=1,
        request_timeout=duration_pb2.Duration(seconds=5),
    )
    async for reply in workflows.ActivateJobs(request):
        (job,) = reply.jobs
        return job
    raise AssertionError(f"no job of {job_type}")


async def _waits(workflows: WorkflowServiceAsyncStub, execution_id: str) -> dict[str, Timestamp]:
    """The times the API gives the execution's waits, by what they are."""
    reply = await workflows.ListExecutionWaits(
        pb.ListExecutionWaitsRequest(execution_id=execution_id)
    )
    times = {}
    for wait in reply.waits:
        if wait.HasField("timer"):
            times["due"] = wait.timer.due_time
        elif wait.job.HasField("lock_expire_time"):
            times["lock expires"] = wait.job.lock_expire_time
        elif wait.job.HasField("next_attempt_time"):
            times["next attempt"] = wait.job.next_attempt_time
    return times


async def test_the_page_shows_the_job_and_the_timer_of_a_waiting_execution(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    workflows = console_suite.workflows
    execution_id, job_type = await _job_with_a_deadline(workflows)
    job = await _activate(workflows, job_type)

    locked = await page_of(client, f"/executions/{execution_id}")
    times = await _waits(workflows, execution_id)
    assert "timer (boundary event, interrupting)" in locked
    assert f"due <time>{_shown(times['due'])}</time>" in locked
    assert f'type: <span class="value">{job_type}</span>' in locked
    assert "locked by a worker" in locked
    assert "worker &lt;img" in locked
    assert f"lock expires <time>{_shown(times['lock expires'])}</time>" in locked
    inert(locked)

    await workflows.FailJob(
        pb.FailJobRequest(
            job_key=job.job_key,
            retries=2,
            error_message=ERROR,
            retry_backoff=duration_pb2.Duration(seconds=600),
        )
    )
    failed = await page_of(client, f"/executions/{execution_id}")
    times = await _waits(workflows, execution_id)
    assert 'retries left: <span class="value">2</span>' in failed
    assert 'failed attempts: <span class="value">1</span>' in failed
    assert 'last error: <span class="error">down &lt;script&gt;' in failed
    assert f"next attempt <time>{_shown(times['next attempt'])}</time>" in failed
    assert "lock expires" not in failed
    inert(failed)


async def test_the_page_shows_the_message_an_execution_waits_for(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    html = await page_of(client, f"/executions/{console_suite.seeded.at_wait}")
    assert "message (receive task)" in html
    assert 'name: <span class="value">go</span>' in html
    assert "since <time>" in html


async def test_a_waits_page_token_that_is_not_the_apis_reads_as_a_message(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    html = await page_of(
        client, f"/executions/{console_suite.seeded.at_wait}?waits_page=forged", 400
    )
    assert "INVALID_ARGUMENT" in html
    assert "<code>page_token</code>" in html
