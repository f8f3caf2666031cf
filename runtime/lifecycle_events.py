"""Lifecycle events every service sends to the metrics service, and the other
calls services make to each other through their outboxes.

The catalog of event types is in docs/architecture.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from google.protobuf import timestamp_pb2

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime.clients import GRPC_SERVICES
from runtime.outbox import Destination
from runtime.stages import stage_value
from runtime.structs import JsonObject, dict_to_struct

RECORD_EVENTS = "metrics.record_events"
# Each service that holds user data erases it when the users service asks.
ERASE_TOPICS = {
    service: f"{service}.erase_user_data"
    for service in ("workflows", "segments", "triggers", "metrics")
}

DESTINATIONS = {
    RECORD_EVENTS: Destination(
        "metrics", f"/{GRPC_SERVICES['metrics']}/RecordEvents", mergeable=True
    ),
    **{
        topic: Destination(service, f"/{GRPC_SERVICES[service]}/EraseUserData")
        for service, topic in ERASE_TOPICS.items()
    },
}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def lifecycle_event(
    event_type: str,
    producer: str,
    event_time: datetime,
    *,
    user_id: uuid.UUID | None = None,
    stage: str | None = None,
    data: JsonObject | None = None,
    workflow_execution_id: uuid.UUID | None = None,
) -> metrics_pb2.LifecycleEvent:
    return metrics_pb2.LifecycleEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        user_id=str(user_id) if user_id else "",
        workflow_execution_id=str(workflow_execution_id) if workflow_execution_id else "",
        lifecycle_stage=stage_value(stage),
        data=dict_to_struct(data),
        event_time=timestamp(event_time),
        producer=producer,
    )


def events_payload(events: Sequence[metrics_pb2.LifecycleEvent]) -> bytes:
    """The outbox payload of RECORD_EVENTS: a RecordEventsRequest holding `events`."""
    return metrics_pb2.RecordEventsRequest(events=events).SerializeToString()


_ERASE_REQUESTS = {
    "workflows": workflows_pb2.EraseUserDataRequest,
    "segments": segments_pb2.EraseUserDataRequest,
    "triggers": triggers_pb2.EraseUserDataRequest,
    "metrics": metrics_pb2.EraseUserDataRequest,
}


def erase_messages(user_id: uuid.UUID) -> list[tuple[str, bytes]]:
    """The outbox messages that ask every other service to erase a user's data."""
    return [
        (ERASE_TOPICS[service], request(user_id=str(user_id)).SerializeToString())
        for service, request in _ERASE_REQUESTS.items()
    ]
