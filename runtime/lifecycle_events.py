"""Lifecycle events every service sends to the metrics service, and the other
calls services make to each other through their outboxes.

The catalog of event types is in docs/architecture.md.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from google.protobuf import struct_pb2

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime.chains import Chain
from runtime.clients import GRPC_SERVICES
from runtime.database import UnitOfWork
from runtime.identity import current_caller
from runtime.outbox import Destination
from runtime.stages import stage_value
from runtime.structs import JsonObject, set_timestamp

RECORD_EVENTS = "metrics.record_events"

# The lifecycle event types of the suite (docs/architecture.md has their payloads).
EVENT_TYPES = frozenset(
    {
        "user.created",
        "user.stage_changed",
        "user.attributes_changed",
        "user.erased",
        "execution.started",
        "execution.completed",
        "execution.failed",
        "execution.cancelled",
        "trigger.fired",
        "segment.entered",
        "segment.exited",
    }
)
# A user event tracked through the triggers service is recorded as
# "tracked.<its type>", e.g. "tracked.signup".
TRACKED_PREFIX = "tracked."
# An event a workflow emits (built-in task lifecycle.emit_event) is recorded as
# "workflow.<its name>", e.g. "workflow.onboarding_nudge".
EMITTED_PREFIX = "workflow."


def is_known_event_type(event_type: str) -> bool:
    return event_type in EVENT_TYPES or any(
        event_type.startswith(prefix) and len(event_type) > len(prefix)
        for prefix in (TRACKED_PREFIX, EMITTED_PREFIX)
    )


# Each service that holds user data erases it when the users service asks.
ERASE_TOPICS = {
    service: f"{service}.erase_user_data"
    for service in ("workflows", "segments", "triggers", "metrics")
}

# Some lifecycle events are also user events the triggers service can fire on
# (segment.entered, user.stage_changed, ...): forwarded to its TrackEvents.
TRACK_EVENTS = "triggers.track_events"
TRACKED_PER_REQUEST = 100

DESTINATIONS = {
    RECORD_EVENTS: Destination(
        "metrics", f"/{GRPC_SERVICES['metrics']}/RecordEvents", mergeable=True
    ),
    TRACK_EVENTS: Destination(
        "triggers", f"/{GRPC_SERVICES['triggers']}/TrackEvents", mergeable=True, max_batch=1000
    ),
    **{
        topic: Destination(service, f"/{GRPC_SERVICES[service]}/EraseUserData")
        for service, topic in ERASE_TOPICS.items()
    },
}


# The variant nibble of a version 4 UUID is 10xx in binary.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _event_ids() -> Iterator[str]:
    """Random version 4 UUIDs, formatted from one urandom call per thousand:
    a system call and a UUID object per id are what make big imports slow."""
    while True:
        block = os.urandom(16 * 1024).hex()
        for at in range(0, len(block), 32):
            h = block[at : at + 32]
            yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


new_event_id = _event_ids().__next__


def destinations(*topics: str) -> dict[str, Destination]:
    """The destinations of the shared topics a service sends."""
    return {topic: DESTINATIONS[topic] for topic in topics}


class EventBatch:
    """Lifecycle events of one producer, built in place into RecordEvents
    requests of at most `per_request` events: the outbox payloads. Events of the
    `forwarded` types are also sent to the triggers service as user events, with
    the lifecycle event's id as their message id.

    Each event carries the actors of its change: those of the current caller
    when the batch is made, unless `add` names others (a batch written for many
    callers at once). A request holds the events of one chain, and is sent on
    its behalf."""

    def __init__(
        self, producer: str, per_request: int = 1000, forwarded: frozenset[str] = frozenset()
    ) -> None:
        self._producer = producer
        self._per_request = per_request
        self._forwarded = forwarded
        self._actors = current_caller().actors
        self._requests: dict[Chain, list[metrics_pb2.RecordEventsRequest]] = defaultdict(list)
        self._tracked: dict[Chain, list[triggers_pb2.Event]] = defaultdict(list)

    def add(
        self,
        event_type: str,
        event_time: datetime,
        *,
        user_id: uuid.UUID | None = None,
        stage: str | None = None,
        data: JsonObject | struct_pb2.Struct | None = None,
        workflow_execution_id: uuid.UUID | None = None,
        actors: Chain | None = None,
    ) -> None:
        """Adds an event; `data` may be a prepared Struct when many events share it."""
        chain = self._actors if actors is None else actors
        requests = self._requests[chain]
        if not requests or len(requests[-1].events) >= self._per_request:
            requests.append(metrics_pb2.RecordEventsRequest())
        event = requests[-1].events.add(
            event_id=new_event_id(),
            event_type=event_type,
            user_id=str(user_id) if user_id else "",
            workflow_execution_id=str(workflow_execution_id) if workflow_execution_id else "",
            lifecycle_stage=stage_value(stage),
            producer=self._producer,
            actors=chain,
        )
        if isinstance(data, struct_pb2.Struct):
            event.data.CopyFrom(data)
        elif data:
            event.data.update(data)
        set_timestamp(event.event_time, event_time)
        if event_type in self._forwarded and user_id is not None:
            self._tracked[chain].append(
                triggers_pb2.Event(
                    user_id=event.user_id,
                    event_type=event_type,
                    data=event.data,
                    event_time=event.event_time,
                    message_id=event.event_id,
                )
            )

    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _ in self._payloads()]

    def _payloads(self) -> Iterator[tuple[Chain, bytes, int]]:
        for chain, requests in self._requests.items():
            for request in requests:
                yield chain, request.SerializeToString(), len(request.events)

    def publish(self, uow: UnitOfWork) -> None:
        for chain, payload, items in self._payloads():
            uow.publish(RECORD_EVENTS, payload, chain, items=items)
        for chain, tracked in self._tracked.items():
            for start in range(0, len(tracked), TRACKED_PER_REQUEST):
                events = tracked[start : start + TRACKED_PER_REQUEST]
                request = triggers_pb2.TrackEventsRequest(events=events)
                uow.publish(TRACK_EVENTS, request.SerializeToString(), chain, items=len(events))


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
