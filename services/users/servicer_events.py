"""The wire side of people's tracked events: RecordUserEvents' request into
events to record, BatchGetUserProfiles' event fields into what a profile
carries, and a profile's events into messages. Every problem names its field."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from lifecycle.users.v1 import users_pb2
from runtime.errors import Violations
from runtime.parsing import optional_time, parse_uuid
from runtime.structs import set_timestamp
from services.users.events import EventReads, RecordedEvent, StoredEvent

MAX_RECORDED_EVENTS = 1000
MAX_EVENT_READS = 100
MAX_EVENT_DATA_BYTES = 65536
# As the triggers service stores them (its events table).
MAX_MESSAGE_ID = 200
MAX_EVENT_TYPE = 100
# An exact type, or a family: a prefix followed by "*".
_EVENT_READ = re.compile(r"[^*]{1,100}\*?")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _data(text: str, field: str, violations: Violations) -> str:
    if len(text.encode()) > MAX_EVENT_DATA_BYTES:
        violations.add(field, f"must be at most {MAX_EVENT_DATA_BYTES} bytes")
        return text
    try:
        value = json.loads(text or "{}", parse_constant=_refuse_constant)
    except ValueError:
        violations.add(field, "must be a JSON object")
        return text
    if not isinstance(value, dict) or "\\u0000" in text:
        violations.add(field, "must be a JSON object (without U+0000)")
    return text or "{}"


def recorded_events(
    request: users_pb2.RecordUserEventsRequest, violations: Violations
) -> list[RecordedEvent]:
    if len(request.events) > MAX_RECORDED_EVENTS:
        violations.add("events", f"must hold at most {MAX_RECORDED_EVENTS} events")
        return []
    events = []
    for index, item in enumerate(request.events):
        at = f"events[{index}]"
        if not 0 < len(item.message_id) <= MAX_MESSAGE_ID:
            violations.add(f"{at}.message_id", f"must be 1 to {MAX_MESSAGE_ID} characters")
        if not 0 < len(item.event_type) <= MAX_EVENT_TYPE:
            violations.add(f"{at}.event_type", f"must be 1 to {MAX_EVENT_TYPE} characters")
        user_id = parse_uuid(item.user_id, f"{at}.user_id", violations)
        occurred_at = optional_time(item, "occur_time")
        if occurred_at is None:
            violations.add(f"{at}.occur_time", "is required")
        data = _data(item.data_json, f"{at}.data_json", violations)
        if user_id is not None and occurred_at is not None:
            events.append(
                RecordedEvent(item.message_id, user_id, item.event_type, occurred_at, data)
            )
    return events


def event_reads(
    request: users_pb2.BatchGetUserProfilesRequest, violations: Violations
) -> EventReads:
    types = list(request.event_types)
    if len(types) > MAX_EVENT_READS:
        violations.add("event_types", f"must hold at most {MAX_EVENT_READS} types")
        return EventReads()
    for index, kind in enumerate(types):
        if not _EVENT_READ.fullmatch(kind):
            violations.add(
                f"event_types[{index}]", "must be an event type, or a family like billing.*"
            )
    return EventReads.of(types, optional_time(request, "events_since"))


def event_messages(events: Sequence[StoredEvent]) -> list[users_pb2.PersonEvent]:
    messages = []
    for event in events:
        message = users_pb2.PersonEvent(event_type=event.event_type, data_json=event.data_json)
        set_timestamp(message.occur_time, event.occurred_at)
        messages.append(message)
    return messages
