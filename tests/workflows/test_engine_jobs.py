"""The job API as external workers see it: ActivateJobs as a long poll, leases
that run out, fetch_variables, and the retry backoff of FailJob."""

from __future__ import annotations

import asyncio
import uuid

from google.protobuf import duration_pb2

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.clock import ManualClock
from runtime.structs import struct_to_dict
from services.workflows.stepper import Stepper
from tests.support import eventually
from tests.workflows.bpmn_docs import end, linear, service, start
from tests.workflows.conftest import Stub, advance, deploy, jobs
from tests.workflows.conftest import start as start_execution

# Far longer than the test needs: the call answering proves the job came while it was open.
LONG_POLL = duration_pb2.Duration(seconds=60)


async def one_task(wf: Stub, retries: int = 3) -> tuple[pb.Workflow, str]:
    job_type = f"job-{uuid.uuid4().hex[:10]}"
    workflow = await deploy(wf, linear(start(), service("task", job_type, retries=retries), end()))
    return workflow, job_type


async def test_activate_jobs_answers_with_a_job_created_while_it_waits(
    wf: Stub, wf_stepper: Stepper
) -> None:
    workflow, job_type = await one_task(wf)
    call = wf.ActivateJobs(
        pb.ActivateJobsRequest(
            job_type=job_type, worker="poller", max_jobs_to_activate=1, request_timeout=LONG_POLL
        )
    )
    reply = asyncio.ensure_future(call.read())
    # Until the call made its first, empty, look and waits for a job of its type.

    async def waiting() -> bool:
        return wf_stepper.waiting_for_jobs(job_type) > 0

    await eventually(waiting)
    assert not reply.done()
    running = await start_execution(wf, workflow)
    answer = await asyncio.wait_for(reply, timeout=30)
    assert isinstance(answer, pb.ActivateJobsResponse)
    assert [job.execution_id for job in answer.jobs] == [running.id]
    call.cancel()


async def test_a_job_whose_lease_runs_out_is_activated_again(wf: Stub, clock: ManualClock) -> None:
    workflow, job_type = await one_task(wf)
    running = await start_execution(wf, workflow)
    lease = pb.ActivateJobsRequest(
        job_type=job_type,
        worker="slow",
        max_jobs_to_activate=1,
        timeout=duration_pb2.Duration(seconds=30),
    )
    reply = await wf.ActivateJobs(lease).read()
    assert isinstance(reply, pb.ActivateJobsResponse)
    (first,) = reply.jobs
    assert first.execution_id == running.id
    assert await jobs(wf, job_type, wait=0) == []
    await advance(clock, seconds=29)
    assert await jobs(wf, job_type, wait=0) == []
    await advance(clock, seconds=2)
    (again,) = await jobs(wf, job_type, wait=0)
    assert again.job_key == first.job_key
    await wf.CompleteJob(pb.CompleteJobRequest(job_key=again.job_key))


async def test_fetch_variables_limits_the_variables_a_job_carries(wf: Stub) -> None:
    workflow, job_type = await one_task(wf)
    await start_execution(wf, workflow, a=1, b=2, c=3)
    reply = await wf.ActivateJobs(
        pb.ActivateJobsRequest(
            job_type=job_type, worker="picky", max_jobs_to_activate=1, fetch_variables=["a", "c"]
        )
    ).read()
    assert isinstance(reply, pb.ActivateJobsResponse)
    (job,) = reply.jobs
    assert struct_to_dict(job.variables) == {"a": 1, "c": 3}


async def failed_once(wf: Stub, job_type: str, backoff_seconds: float = 0) -> None:
    """Activates the job of `job_type` and fails it with a retry left."""
    (job,) = await jobs(wf, job_type, wait=0)
    await wf.FailJob(
        pb.FailJobRequest(
            job_key=job.job_key,
            retries=job.retries - 1,
            error_message="try later",
            retry_backoff=duration_pb2.Duration(seconds=int(backoff_seconds)),
        )
    )


async def comes_back_after(wf: Stub, clock: ManualClock, job_type: str, seconds: float) -> None:
    await advance(clock, seconds=seconds - 0.01)
    assert await jobs(wf, job_type, wait=0) == [], f"back before {seconds} s"
    await advance(clock, seconds=0.02)


async def test_failed_jobs_come_back_after_an_exponential_backoff(
    wf: Stub, clock: ManualClock
) -> None:
    workflow, job_type = await one_task(wf, retries=5)
    await start_execution(wf, workflow)
    for seconds in (1, 2, 4):
        await failed_once(wf, job_type)
        await comes_back_after(wf, clock, job_type, seconds)
    (job,) = await jobs(wf, job_type, wait=0)
    assert job.retries == 2


async def test_fail_job_with_a_retry_backoff_waits_that_long(wf: Stub, clock: ManualClock) -> None:
    workflow, job_type = await one_task(wf)
    await start_execution(wf, workflow)
    await failed_once(wf, job_type, backoff_seconds=30)
    await comes_back_after(wf, clock, job_type, 30)
    (job,) = await jobs(wf, job_type, wait=0)
    assert job.retries == 2
