"""Every RPC of every service, found from the descriptors, gets generated
requests (tests/edges/requests.py) and raw bytes. Whatever arrives, the answer
is never INTERNAL or UNKNOWN, never later than the call's deadline, never an
oversized status, and the service still answers its health check after.

The requests may name a user, workflows, executions, a segment and a trigger
that exist, so that they reach past "not found". The calls are made from a
thread of their own with a blocking client, so the services keep serving on
the test's event loop meanwhile. Each method runs FUZZ_EXAMPLES examples from
a fixed seed, so CI runs the same requests every time; a failure prints the
seed and Hypothesis's @reproduce_failure blob. To explore further:
LIFECYCLE_FUZZ_SEED=<n> LIFECYCLE_FUZZ_EXAMPLES=<k> pytest tests/edges/test_fuzz.py
(docs/operations.md)."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.operations.v1 import operations_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime.structs import dict_to_struct
from tests.edges.conftest import Edges
from tests.edges.requests import BPMN_DOCUMENTS, KNOWN_IDS, requests

EXAMPLES = int(os.environ.get("LIFECYCLE_FUZZ_EXAMPLES", "40"))
DEADLINE_SECONDS = 10.0
# A call's answer may come this much after its deadline (the client's own
# timer and scheduling), and no later.
LATE_SECONDS = 1.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SERVICES = {
    "users": users_pb2,
    "workflows": workflows_pb2,
    "segments": segments_pb2,
    "triggers": triggers_pb2,
    "metrics": metrics_pb2,
}
# Each service's own methods, and the operations service it serves beside them.
METHODS = [
    (name, method)
    for name, module in SERVICES.items()
    for service in (
        *module.DESCRIPTOR.services_by_name.values(),
        operations_pb2.DESCRIPTOR.services_by_name["OperationsService"],
    )
    for method in service.methods
]


def _seed(method: MethodDescriptor) -> int:
    chosen = os.environ.get("LIFECYCLE_FUZZ_SEED")
    return int(chosen) if chosen else zlib.crc32(method.full_name.encode())


class Caller:
    """Calls one method with a blocking client, as raw bytes either way."""

    def __init__(self, channel: grpc.Channel, method: MethodDescriptor) -> None:
        path = f"/{method.containing_service.full_name}/{method.name}"
        self._method = method
        if method.client_streaming:
            self._call: Any = channel.stream_unary(path, None, None)
        elif method.server_streaming:
            self._call = channel.unary_stream(path, None, None)
        else:
            self._call = channel.unary_unary(path, None, None)

    def __call__(self, request: bytes) -> None:
        if self._method.client_streaming:
            self._call(iter([request, request]), timeout=DEADLINE_SECONDS)
        elif self._method.server_streaming:
            for _ in self._call(request, timeout=DEADLINE_SECONDS):
                pass
        else:
            self._call(request, timeout=DEADLINE_SECONDS)


def _payload(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _answer(caller: Caller, request: bytes) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        caller(request)
    except grpc.RpcError as error:
        return error.code(), error.details() or "", time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=2.0
    )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def fuzz(address: str, method: MethodDescriptor) -> None:
    with grpc.insecure_channel(address) as channel:
        caller = Caller(channel, method)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        )
        @seed(_seed(method))
        @given(request=requests(method.input_type))
        def answers_well(request: Message | bytes) -> None:
            code, details, seconds = _answer(caller, _payload(request))
            assert code not in FORBIDDEN, f"{code.name}: {details}"
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer in {seconds:.1f}s"
            assert seconds < DEADLINE_SECONDS + LATE_SECONDS
            assert "metadata size" not in details, details
            assert _serving(channel), "the service stopped serving"

        try:
            answers_well()
        except Exception as error:
            error.add_note(f"seed {_seed(method)}: LIFECYCLE_FUZZ_SEED={_seed(method)} replays it")
            raise


def _ids() -> Iterator[str]:
    for name, method in METHODS:
        yield f"{name}.{method.name}"


@pytest.fixture(scope="module")
async def known(edges: Edges) -> None:
    """A user, workflows, an execution, a segment and a trigger whose ids the
    generated requests may name (tests/edges/requests.py, KNOWN_IDS)."""
    user = await edges.users.CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email="fuzz@example.com"))
    )
    ids = [user.user.id]
    for bpmn in BPMN_DOCUMENTS:
        created = await edges.workflows.CreateWorkflow(
            workflows_pb2.CreateWorkflowRequest(
                workflow=workflows_pb2.Workflow(name=f"fuzz {len(ids)}", bpmn_xml=bpmn)
            )
        )
        workflow_id = created.workflow.id
        await edges.workflows.ActivateWorkflow(
            workflows_pb2.ActivateWorkflowRequest(workflow_id=workflow_id)
        )
        started = await edges.workflows.StartExecution(
            workflows_pb2.StartExecutionRequest(workflow_id=workflow_id, user_id=user.user.id)
        )
        ids += [workflow_id, started.execution.id]
    segment = await edges.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(
                name="fuzz", conditions=dict_to_struct({"v": 1, "attr": "n", "op": "exists"})
            )
        )
    )
    trigger = await edges.triggers.CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(name="fuzz", event_type="signup", workflow_id=ids[1])
        )
    )
    KNOWN_IDS[:] = [*ids, segment.segment.id, trigger.trigger.id]


@pytest.mark.usefixtures("known")
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize(("service", "method"), METHODS, ids=list(_ids()))
async def test_generated_requests_never_break_a_service(
    edges: Edges, service: str, method: MethodDescriptor
) -> None:
    address = edges.env[f"LIFECYCLE_{service.upper()}_ADDRESS"]
    await asyncio.to_thread(fuzz, address, method)
