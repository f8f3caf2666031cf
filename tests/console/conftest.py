"""The five services on loopback ports over a database of the package's own,
a console in front of them (httpx's ASGI client), and the data its pages show:
a workflow whose names, description, variables and incident message are XSS
payloads, with executions waiting, completed and failed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from playwright.async_api import Browser, Page

from console.app import create_app
from console.calls import Services
from console.config import ConsoleConfig, load_console_config
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.structs import dict_to_struct
from suite.registry import DEFINITIONS
from tests.conftest import migrated_database
from tests.console.browsing import chromium, served
from tests.console.diagrams import job_then_message
from tests.support import eventually, free_port, service_env, whole_suite

if TYPE_CHECKING:
    from lifecycle.workflows.v1.workflows_pb2_grpc import WorkflowServiceAsyncStub
else:
    WorkflowServiceAsyncStub = Any

SCRIPT = "<script>window.__xss = 1</script>"
IMAGE = '<img src="x" onerror="window.__xss = 1">'
# Where the payloads go, and the phrase each page shows them by.
PAYLOADS = {
    "workflow name": f"onboarding {SCRIPT}",
    "description": f"described {IMAGE}",
    "work": f"work {IMAGE}",
    "wait": f"wait {SCRIPT}",
    "variable": f'{IMAGE}"',
    "incident": f"failed {SCRIPT}{IMAGE}",
}


@dataclass(frozen=True)
class Seeded:
    """What the tests stored through the services' APIs."""

    workflow: pb.Workflow
    # An execution at each place: waiting for the job, waiting for the message, with an incident.
    at_work: str
    at_wait: str
    failed: str
    incident_id: str


@dataclass(frozen=True)
class Console:
    env: dict[str, str]
    config: ConsoleConfig
    channels: dict[str, grpc.aio.Channel]
    workflows: WorkflowServiceAsyncStub
    seeded: Seeded


async def _jobs(
    workflows: WorkflowServiceAsyncStub, job_type: str, count: int
) -> list[pb.ActivatedJob]:
    found: list[pb.ActivatedJob] = []
    request = pb.ActivateJobsRequest(
        job_type=job_type,
        worker="console-tests",
        max_jobs_to_activate=count,
        request_timeout=duration_pb2.Duration(seconds=5),
    )
    async for reply in workflows.ActivateJobs(request):
        found += reply.jobs
    return found


async def _start(workflows: WorkflowServiceAsyncStub, workflow: pb.Workflow) -> str:
    reply = await workflows.StartExecution(
        pb.StartExecutionRequest(
            workflow_id=workflow.id,
            user_id=str(uuid.uuid4()),
            variables=dict_to_struct({"note": PAYLOADS["variable"], PAYLOADS["variable"]: 1}),
        )
    )
    return reply.execution.id


async def _fail(workflows: WorkflowServiceAsyncStub, job: pb.ActivatedJob) -> str:
    """Fails the job for good; the id of the incident it raises."""
    await workflows.FailJob(
        pb.FailJobRequest(job_key=job.job_key, retries=0, error_message=PAYLOADS["incident"])
    )
    incidents: list[pb.Incident] = []

    async def raised() -> bool:
        reply = await workflows.GetExecution(pb.GetExecutionRequest(execution_id=job.execution_id))
        incidents[:] = reply.execution.incidents
        return bool(incidents)

    await eventually(raised)
    return incidents[0].id


async def _deploy(workflows: WorkflowServiceAsyncStub, job_type: str) -> pb.Workflow:
    document = job_then_message(job_type, {"work": PAYLOADS["work"], "wait": PAYLOADS["wait"]})
    created = await workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(
            workflow=pb.Workflow(
                name=PAYLOADS["workflow name"],
                description=PAYLOADS["description"],
                bpmn_xml=document,
            )
        )
    )
    activated = await workflows.ActivateWorkflow(
        pb.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return activated.workflow


async def new_incident(workflows: WorkflowServiceAsyncStub) -> tuple[str, str]:
    """An execution (of a workflow of its own) with an open incident: its id and the incident's."""
    job_type = f"console-{uuid.uuid4().hex[:8]}"
    execution_id = await _start(workflows, await _deploy(workflows, job_type))
    (job,) = await _jobs(workflows, job_type, 1)
    return execution_id, await _fail(workflows, job)


async def _seed(workflows: WorkflowServiceAsyncStub) -> Seeded:
    job_type = f"console-{uuid.uuid4().hex[:8]}"
    workflow = await _deploy(workflows, job_type)
    started = {await _start(workflows, workflow) for _ in range(3)}
    done, failing = sorted(await _jobs(workflows, job_type, 2), key=lambda job: job.execution_id)
    await workflows.CompleteJob(pb.CompleteJobRequest(job_key=done.job_key))
    incident_id = await _fail(workflows, failing)
    (left,) = started - {done.execution_id, failing.execution_id}
    return Seeded(workflow, left, done.execution_id, failing.execution_id, incident_id)


@pytest.fixture(scope="package")
async def console_suite(server_url: str) -> AsyncIterator[Console]:
    async with migrated_database(server_url, "lifecycle_console") as database:
        env = service_env(
            database,
            {name: free_port() for name in DEFINITIONS},
            LIFECYCLE_CONSOLE_PORT=str(free_port()),
            LIFECYCLE_WORKFLOWS_POLL_SECONDS="0.2",
            LIFECYCLE_LOG_LEVEL="ERROR",
        )
        async with whole_suite(env) as channels:
            workflows: WorkflowServiceAsyncStub = workflows_pb2_grpc.WorkflowServiceStub(
                channels["workflows"]
            )
            seeded = await _seed(workflows)
            yield Console(env, load_console_config(env), channels, workflows, seeded)


@pytest.fixture(scope="package")
async def services(console_suite: Console) -> AsyncIterator[Services]:
    calls = Services(console_suite.config)
    try:
        yield calls
    finally:
        await calls.close()


@pytest.fixture
async def client(console_suite: Console, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A browser of the console, without its scripts: it keeps cookies."""
    transport = httpx.ASGITransport(app=create_app(console_suite.config, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as browser:
        yield browser


@pytest.fixture(scope="package")
async def console_url(console_suite: Console, services: Services) -> AsyncIterator[str]:
    async with served(console_suite.config, services) as url:
        yield url


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    try:
        yield await context.new_page()
    finally:
        await context.close()
