"""Every status fits in 4 KiB, grpc-message and details together: gRPC's C-core
clients (this Python client among them) refuse trailers past 8 KiB and report
RESOURCE_EXHAUSTED instead of the real status. The worst cases go through a
default client and must arrive as themselves, listing at most 20 violations
with how many more, and saying a repeated list of choices once."""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.workflows.v1 import workflows_pb2 as wf
from runtime.errors import MAX_LISTED_VIOLATIONS, MAX_STATUS_BYTES
from runtime.structs import dict_to_struct
from tests.edges.conftest import Edges
from tests.support import error_info, rpc_error, violated_fields
from tests.workflows.bpmn_docs import definitions, end, start


def bad_request(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    found = error_details_pb2.BadRequest()
    assert any(detail.Unpack(found) for detail in status.details)
    return found


def wire_size(error: grpc.aio.AioRpcError) -> int:
    """The bytes of grpc-message (percent-encoded) and grpc-status-details-bin (base64)."""
    message = urllib.parse.quote(error.details() or "", safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    trailers = cast(list[tuple[str, bytes]], list(error.trailing_metadata() or ()))
    [details] = [value for key, value in trailers if key == "grpc-status-details-bin"]
    return len(message) + len(base64.b64encode(details))


def assert_fits(error: grpc.aio.AioRpcError) -> list[str]:
    """The status arrived as itself, within the limit, listing at most 20
    violations (all of them counted) and saying how many the message leaves
    out; the fields listed."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert wire_size(error) <= MAX_STATUS_BYTES
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None and status.message == error.details()
    total = int(error_info(error).metadata["violation_count"])
    listed = violated_fields(error)
    assert 1 <= len(listed) <= min(total, MAX_LISTED_VIOLATIONS)
    named = (error.details() or "").split("; ")
    if len(named) < total:
        assert named[-1] == f"and {total - len(named) + 1} more"
    return listed


async def test_a_workflow_with_many_problems_lists_what_fits_and_counts_the_rest(
    edges: Edges,
) -> None:
    tasks = [f'<bpmn:serviceTask id="{"t" * 200}{n}"/>' for n in range(300)]
    bpmn = definitions(start(), end(), *tasks)
    error = await rpc_error(
        edges.workflows.CreateWorkflow(
            wf.CreateWorkflowRequest(workflow=wf.Workflow(name="many problems", bpmn_xml=bpmn))
        )
    )
    assert len(assert_fits(error)) >= 5
    assert int(error_info(error).metadata["violation_count"]) >= 300


async def test_a_segment_with_thirty_bad_leaves_says_the_operator_list_once(
    edges: Edges,
) -> None:
    leaves = [{"attr": f"a{n}", "op": "nope", "value": 1} for n in range(30)]
    error = await rpc_error(
        edges.segments.CreateSegment(
            segments_pb2.CreateSegmentRequest(
                segment=segments_pb2.Segment(
                    name=f"bad-{uuid.uuid4().hex[:6]}",
                    conditions=dict_to_struct({"v": 1, "all": leaves}),
                )
            )
        )
    )
    assert len(assert_fits(error)) >= 15
    operators = [v for v in bad_request(error).field_violations if "starts_with" in v.description]
    assert [v.field for v in operators] == ["segment.conditions.all[0].op"], "said once"
    assert operators[0].description.endswith("changed_from"), "and said whole"


async def test_a_huge_metric_name_is_echoed_cut_short(edges: Edges) -> None:
    error = await rpc_error(
        edges.metrics.GetMetrics(
            metrics_pb2.GetMetricsRequest(
                start_date="2026-01-01", end_date="2026-01-02", metric_names=["x" * 100_000]
            )
        )
    )
    assert assert_fits(error) == ["metric_names[0]"]


async def test_twenty_thousand_unknown_event_types_are_counted_not_listed(edges: Edges) -> None:
    types = [f"unknown.type.{n}" for n in range(20_000)]
    error = await rpc_error(
        edges.metrics.ListEvents(metrics_pb2.ListEventsRequest(event_types=types))
    )
    assert len(assert_fits(error)) == MAX_LISTED_VIOLATIONS
    assert error_info(error).metadata["violation_count"] == "20000"


async def test_text_that_grows_when_encoded_still_fits(edges: Edges) -> None:
    """grpc-message is percent-encoded: each byte past ASCII costs three."""
    names = ["é" * 3000 for _ in range(40)]
    error = await rpc_error(
        edges.metrics.GetMetrics(
            metrics_pb2.GetMetricsRequest(
                start_date="2026-01-01", end_date="2026-01-02", metric_names=names
            )
        )
    )
    assert_fits(error)
