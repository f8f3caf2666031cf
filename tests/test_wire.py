"""runtime.wire: a mergeable request is its one-item requests one after
another, and splits back into them."""

from __future__ import annotations

from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime import wire


def test_a_merged_request_splits_into_its_one_item_requests() -> None:
    events = [
        users_pb2.UserEvent(message_id=f"m{n}", event_type="buy", data_json="x" * n * 40)
        for n in range(5)
    ]
    items = [users_pb2.RecordUserEventsRequest(events=[e]).SerializeToString() for e in events]
    merged = users_pb2.RecordUserEventsRequest.FromString(b"".join(items))
    assert list(merged.events) == events
    assert wire.fields(merged.SerializeToString()) == items
    assert wire.fields(b"") == []


def test_serialized_messages_as_values_of_a_repeated_field() -> None:
    starts = [
        workflows_pb2.StartExecutionRequest(workflow_id="w", user_id="u" * size, request_id="r")
        for size in (0, 1, 100, 200, 20_000)
    ]
    encoded = b"".join(wire.message_field(1, s.SerializeToString()) for s in starts)
    assert encoded == workflows_pb2.StartExecutionsRequest(starts=starts).SerializeToString()
    assert list(workflows_pb2.StartExecutionsRequest.FromString(encoded).starts) == starts
