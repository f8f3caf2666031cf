"""Tracing end to end: the five services run as processes of their own and
export their spans over OTLP to a receiver in this test. One event sent to
TrackEvent starts a workflow whose built-in task moves the user's stage; all
of it is one trace, with spans from triggers, workflows, users and metrics in
the order the calls were made, through the outboxes and the engine's jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from lifecycle.common.v1 import stage_pb2
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.config import SERVICE_NAMES
from runtime.structs import dict_to_struct
from tests.support import ScratchDatabase, free_port, service_env
from tests.workflows.bpmn_docs import end, linear, service, start

TRACK_EVENT = "/lifecycle.triggers.v1.TriggerService/TrackEvent"
START_EXECUTIONS = "/lifecycle.workflows.v1.WorkflowService/StartExecutions"
TRANSITION_STAGE = "/lifecycle.users.v1.UserService/TransitionStage"
RECORD_EVENTS = "/lifecycle.metrics.v1.MetricsService/RecordEvents"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                self.spans += [
                    ReceivedSpan(
                        service,
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                    )
                    for span in scope.spans
                ]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[OtlpReceiver, int]]:
    collected = OtlpReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collected, port
    finally:
        await server.stop(None)


@pytest.fixture
async def suite(
    own_database: ScratchDatabase, receiver: tuple[OtlpReceiver, int]
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """The five services, each in its own process, exporting to the receiver. They
    get a database of their own: on the shared one, the outboxes of services that
    other tests run in this process would claim and send this trace's messages."""
    ports = {name: free_port() for name in SERVICE_NAMES}
    env = {
        **os.environ,
        **service_env(own_database, ports),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "LIFECYCLE_WORKFLOWS_POLL_SECONDS": "0.2",
        "LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS": "0",
        "LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS": "0",
        "LIFECYCLE_LOG_LEVEL": "WARNING",
    }
    processes = [
        subprocess.Popen([sys.executable, "-m", "suite.cli", "serve", name], env=env)
        for name in SERVICE_NAMES
    ]
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{ports[name]}") for name in ports}
    try:
        await asyncio.gather(*(serving(channel) for channel in channels.values()))
        yield channels
    finally:
        for channel in channels.values():
            await channel.close(None)
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


async def serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(300):
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("a service never became ready")


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


async def test_one_event_is_one_trace_through_triggers_workflows_users_and_metrics(
    suite: dict[str, grpc.aio.Channel], receiver: tuple[OtlpReceiver, int]
) -> None:
    users = users_pb2_grpc.UserServiceStub(suite["users"])
    workflows = workflows_pb2_grpc.WorkflowServiceStub(suite["workflows"])
    triggers = triggers_pb2_grpc.TriggerServiceStub(suite["triggers"])
    user = (
        await users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email=f"traced-{uuid.uuid4().hex[:8]}@example.com")
            )
        )
    ).user
    bpmn = linear(start(), service("activate", "lifecycle.set_stage", stage="Activation"), end())
    workflow = (
        await workflows.CreateWorkflow(
            workflows_pb2.CreateWorkflowRequest(
                workflow=workflows_pb2.Workflow(name="activate on signup", bpmn_xml=bpmn)
            )
        )
    ).workflow
    await workflows.ActivateWorkflow(workflows_pb2.ActivateWorkflowRequest(workflow_id=workflow.id))
    event_type = f"signup_{uuid.uuid4().hex[:6]}"
    await triggers.CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(
                name="start activation",
                event_type=event_type,
                conditions=dict_to_struct({}),
                workflow_id=workflow.id,
            )
        )
    )

    await triggers.TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(
                user_id=user.id, event_type=event_type, message_id=str(uuid.uuid4())
            )
        )
    )

    collected, _ = receiver
    problem: str | None = "nothing exported"
    for _ in range(300):
        moved = await users.GetUser(users_pb2.GetUserRequest(user_id=user.id))
        if moved.user.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_ACTIVATION:
            problem = one_trace_problem(collected.spans)
            if problem is None:
                break
        await asyncio.sleep(0.1)
    assert moved.user.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_ACTIVATION
    assert problem is None, problem


def one_trace_problem(spans: list[ReceivedSpan]) -> str | None:
    """What is missing or out of order in the trace of the TrackEvent call (spans
    arrive in batches, so this is asked until it has no answer)."""
    roots = [s for s in spans if (s.name, s.service) == (TRACK_EVENT, "lifecycle-triggers")]
    if len(roots) != 1:
        return f"{len(roots)} TrackEvent server spans"
    root = roots[0]
    trace = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in trace}
    if root.parent_id in by_id:
        return "TrackEvent is not the root of its trace"

    # Each call shows as a client span in the caller and a server span in the callee.
    def served(name: str, service: str) -> list[ReceivedSpan]:
        return [s for s in trace if (s.name, s.service) == (name, service)]

    started = served(START_EXECUTIONS, "lifecycle-workflows")
    moved = served(TRANSITION_STAGE, "lifecycle-users")
    recorded = served(RECORD_EVENTS, "lifecycle-metrics")
    if len(started) != 1 or len(moved) != 1:
        return f"{len(started)} StartExecutions and {len(moved)} TransitionStage server spans"
    if root not in ancestors(started[0], by_id):
        return "StartExecutions does not descend from TrackEvent"
    if started[0] not in ancestors(moved[0], by_id):
        return "the stage change does not descend from the workflow's start"
    if not all(root in ancestors(s, by_id) for s in recorded):
        return "a RecordEvents does not descend from TrackEvent"
    # The events of the stage change, recorded by the users service's outbox.
    if not any(moved[0] in ancestors(s, by_id) for s in recorded):
        return "no RecordEvents descends from the stage change"
    return None
