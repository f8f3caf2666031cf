"""A call answers within its deadline whatever it asks for: a job long poll
longer than the caller's deadline ends, empty, before that deadline."""

from __future__ import annotations

import uuid

from google.protobuf import duration_pb2

from lifecycle.workflows.v1 import workflows_pb2 as wf
from tests.edges.conftest import Edges


async def test_a_long_poll_past_the_callers_deadline_answers_before_it(edges: Edges) -> None:
    stream = edges.workflows.ActivateJobs(
        wf.ActivateJobsRequest(
            job_type=f"nobody-{uuid.uuid4().hex[:8]}",
            max_jobs_to_activate=1,
            request_timeout=duration_pb2.Duration(seconds=600),
        ),
        timeout=2.0,
    )
    replies = [reply async for reply in stream]
    assert replies == []
