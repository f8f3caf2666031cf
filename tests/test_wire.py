"""runtime.wire: a mergeable request is its one-item requests one after
another, and splits back into them."""

from __future__ import annotations

from lifecycle.users.v1 import users_pb2
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
