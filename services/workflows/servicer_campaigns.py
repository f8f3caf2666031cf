"""A recurring campaign's cycles as GetWorkflow answers them (campaigns.py)."""

from __future__ import annotations

from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.structs import timestamp
from services.workflows.store.campaigns import COMPLETED, FAILED, RUNNING, SCHEDULED, CycleRow

# The cycles GetWorkflow answers: the scheduled one and the latest that began.
RECENT_CYCLES = 11

_STATES = {
    SCHEDULED: pb.CAMPAIGN_CYCLE_STATE_SCHEDULED,
    RUNNING: pb.CAMPAIGN_CYCLE_STATE_RUNNING,
    COMPLETED: pb.CAMPAIGN_CYCLE_STATE_COMPLETED,
    FAILED: pb.CAMPAIGN_CYCLE_STATE_FAILED,
}


def cycle_message(cycle: CycleRow) -> pb.CampaignCycle:
    message = pb.CampaignCycle(
        cycle_time=timestamp(cycle.due_at),
        workflow_version=cycle.workflow_version,
        segment_id=str(cycle.segment_id),
        state=_STATES[cycle.status],
        started_count=cycle.started_count,
        error_message=cycle.error_message or "",
    )
    if cycle.finished_at is not None:
        message.finish_time.CopyFrom(timestamp(cycle.finished_at))
    return message
