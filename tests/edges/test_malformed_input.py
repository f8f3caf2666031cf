"""Values protobuf accepts but no service can use are INVALID_ARGUMENT naming
the field, never INTERNAL: Timestamps and Durations out of their range, U+0000
in strings and JSON, numbers JSON cannot hold, forged page tokens; a rollup of
days without partitions is FAILED_PRECONDITION."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2 as tr
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2 as wf
from runtime.pagination import PageTokens
from tests.edges.conftest import PAGE_TOKEN_SECRET, Edges
from tests.support import error_info, rpc_error, violated_fields

FAR_FUTURE = timestamp_pb2.Timestamp(seconds=2**62)
BEFORE_YEAR_ONE = timestamp_pb2.Timestamp(seconds=-(2**40))
BAD_NANOS = timestamp_pb2.Timestamp(seconds=1, nanos=-1)
HUGE = duration_pb2.Duration(seconds=2**62)
TEN_THOUSAND_YEARS = duration_pb2.Duration(seconds=315_000_000_000)
USER = str(uuid.uuid4())


def struct(**values: Any) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


Call = Callable[[Edges], Awaitable[Any]]

CASES: list[tuple[str, Call, str]] = [
    # Timestamps out of their range.
    (
        "ListUsers created_after",
        lambda e: e.users.ListUsers(users_pb2.ListUsersRequest(created_after=FAR_FUTURE)),
        "created_after",
    ),
    (
        "ListUsers created_before",
        lambda e: e.users.ListUsers(users_pb2.ListUsersRequest(created_before=BAD_NANOS)),
        "created_before",
    ),
    (
        "CountUsers as_of",
        lambda e: e.users.CountUsers(
            users_pb2.CountUsersRequest(condition=struct(v=1, all=[]), as_of=BEFORE_YEAR_ONE)
        ),
        "as_of",
    ),
    (
        "ListEvents start_time",
        lambda e: e.metrics.ListEvents(metrics_pb2.ListEventsRequest(start_time=FAR_FUTURE)),
        "start_time",
    ),
    (
        "TrackEvent event_time",
        lambda e: e.triggers.TrackEvent(
            tr.TrackEventRequest(
                event=tr.Event(user_id=USER, event_type="x", message_id="m", event_time=FAR_FUTURE)
            )
        ),
        "event.event_time",
    ),
    # Durations out of their range, or past what the field allows.
    (
        "ActivateJobs timeout",
        lambda e: e.workflows.ActivateJobs(
            wf.ActivateJobsRequest(job_type="t", max_jobs_to_activate=1, timeout=HUGE)
        ).read(),
        "timeout",
    ),
    (
        "ActivateJobs timeout past 30 days",
        lambda e: e.workflows.ActivateJobs(
            wf.ActivateJobsRequest(job_type="t", max_jobs_to_activate=1, timeout=TEN_THOUSAND_YEARS)
        ).read(),
        "timeout",
    ),
    (
        "FailJob retry_backoff",
        lambda e: e.workflows.FailJob(
            wf.FailJobRequest(job_key="k", retry_backoff=TEN_THOUSAND_YEARS)
        ),
        "retry_backoff",
    ),
    (
        "PublishMessage time_to_live",
        lambda e: e.workflows.PublishMessage(
            wf.PublishMessageRequest(name="n", correlation_key=USER, time_to_live=HUGE)
        ),
        "time_to_live",
    ),
    (
        "CreateTrigger reentry period",
        lambda e: e.triggers.CreateTrigger(
            tr.CreateTriggerRequest(
                trigger=tr.Trigger(
                    name="n",
                    event_type="x",
                    workflow_id=USER,
                    reentry=tr.ReentryPolicy(mode=tr.REENTRY_MODE_ONCE_PER_PERIOD, period=HUGE),
                )
            )
        ),
        "trigger.reentry.period",
    ),
    # U+0000 in strings and JSON.
    (
        "CreateUser email",
        lambda e: e.users.CreateUser(
            users_pb2.CreateUserRequest(user=users_pb2.User(email="a\x00@example.com"))
        ),
        "user.email",
    ),
    (
        "CreateUser attribute value",
        lambda e: e.users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="nul@example.com", attributes=struct(plan="a\x00"))
            )
        ),
        "user.attributes.plan",
    ),
    (
        "CreateUser attribute key",
        lambda e: e.users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="nul@example.com", attributes=struct(**{"k\x00": 1}))
            )
        ),
        "user.attributes.k\\u0000",
    ),
    (
        "CreateUser attribute not finite",
        lambda e: e.users.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="nan@example.com", attributes=struct(score=[1, math.inf]))
            )
        ),
        "user.attributes.score[1]",
    ),
    (
        "TransitionStage metadata",
        lambda e: e.users.TransitionStage(
            users_pb2.TransitionStageRequest(
                user_id=USER,
                to_stage=stage_pb2.LIFECYCLE_STAGE_ACTIVATION,
                metadata=struct(why={"deep": "\x00"}),
            )
        ),
        "metadata.why.deep",
    ),
    (
        "CreateWorkflow name",
        lambda e: e.workflows.CreateWorkflow(
            wf.CreateWorkflowRequest(workflow=wf.Workflow(name="a\x00", bpmn_xml="<x/>"))
        ),
        "workflow.name",
    ),
    (
        "StartExecution variables",
        lambda e: e.workflows.StartExecution(
            wf.StartExecutionRequest(
                workflow_id=USER, user_id=USER, variables=struct(items=["ok", "\x00"])
            )
        ),
        "variables.items[1]",
    ),
    (
        "PublishMessage message_id",
        lambda e: e.workflows.PublishMessage(
            wf.PublishMessageRequest(name="n", correlation_key=USER, message_id="m\x00")
        ),
        "message_id",
    ),
    (
        "ActivateJobs job_type",
        lambda e: e.workflows.ActivateJobs(
            wf.ActivateJobsRequest(job_type="t\x00", max_jobs_to_activate=1)
        ).read(),
        "job_type",
    ),
    (
        "CompleteJob variables",
        lambda e: e.workflows.CompleteJob(
            wf.CompleteJobRequest(job_key="k", variables=struct(v="\x00"))
        ),
        "variables.v",
    ),
    (
        "CreateSegment condition value",
        lambda e: e.segments.CreateSegment(
            segments_pb2.CreateSegmentRequest(
                segment=segments_pb2.Segment(
                    name="s",
                    conditions=struct(v=1, attr="plan", op="eq", value="a\x00"),
                )
            )
        ),
        "segment.conditions.value",
    ),
    (
        "CreateTrigger condition",
        lambda e: e.triggers.CreateTrigger(
            tr.CreateTriggerRequest(
                trigger=tr.Trigger(
                    name="n",
                    event_type="x",
                    workflow_id=USER,
                    conditions=struct(v=1, attr="\x00", op="eq", value=1),
                )
            )
        ),
        "trigger.conditions.attr",
    ),
    (
        "TrackEvent message_id",
        lambda e: e.triggers.TrackEvent(
            tr.TrackEventRequest(event=tr.Event(user_id=USER, event_type="x", message_id="\x00"))
        ),
        "event.message_id",
    ),
    (
        "GetMetrics dimensions",
        lambda e: e.metrics.GetMetrics(
            metrics_pb2.GetMetricsRequest(
                start_date="2026-01-01", end_date="2026-01-02", dimensions=struct(k="\x00")
            )
        ),
        "dimensions.k",
    ),
    (
        "ListEvents event_types",
        lambda e: e.metrics.ListEvents(metrics_pb2.ListEventsRequest(event_types=["a\x00"])),
        "event_types[0]",
    ),
]


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_value_no_service_can_use_is_invalid_argument_naming_its_field(
    edges: Edges, call: Call, field: str
) -> None:
    error = await rpc_error(call(edges))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in violated_fields(error)


def forged(query: list[Any], cursor: list[Any]) -> str:
    """A page token that decrypts (made with the services' secret) but holds a
    cursor of the wrong shape: what a leaked secret or an older release gives."""
    return PageTokens(PAGE_TOKEN_SECRET).encode(cursor, query)


@pytest.mark.parametrize(
    "cursor",
    [[], ["not a time", "x"], ["2026-01-01T00:00:00+00:00", "not a uuid"], [1, 2], [None]],
)
async def test_a_forged_page_token_with_a_malformed_cursor_is_invalid_argument(
    edges: Edges, cursor: list[Any]
) -> None:
    token = forged([None, "", None], cursor)
    error = await rpc_error(edges.triggers.ListTriggers(tr.ListTriggersRequest(page_token=token)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]
    assert "malformed" in (error.details() or "")


async def test_a_forged_cursor_number_out_of_range_is_invalid_argument(edges: Edges) -> None:
    # ListEvents' filters: user, types, stages, execution, time range, actor.
    query: list[Any] = ["", (), (), "", None, None, ""]
    token = forged(query, ["2026-01-01T00:00:00+00:00", 2**70])
    error = await rpc_error(
        edges.metrics.ListEvents(metrics_pb2.ListEventsRequest(page_token=token))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in (error.details() or "")


async def test_a_rollup_of_days_without_a_partition_is_failed_precondition(edges: Edges) -> None:
    error = await rpc_error(
        edges.metrics.RunRollup(
            metrics_pb2.RunRollupRequest(start_date="1900-01-01", end_date="1900-01-02")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info.reason == "NO_PARTITION"
    assert dict(info.metadata) == {"start_date": "1900-01-01", "end_date": "1900-01-02"}
