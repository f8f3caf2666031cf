"""The checks every request passes before a service reads it (runtime.wire_checks,
runtime.structs) and the size of every status (runtime.errors)."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from lifecycle.triggers.v1 import triggers_pb2 as tr
from lifecycle.workflows.v1 import workflows_pb2 as wf
from runtime import wire_checks
from runtime.errors import (
    MAX_LISTED_VIOLATIONS,
    MAX_STATUS_BYTES,
    FieldViolation,
    InvalidArgument,
    NotFound,
    to_status,
)
from runtime.structs import JsonValueError, struct_to_dict


def test_clean_requests_pass_and_bad_values_are_named_by_path() -> None:
    request = tr.TrackEventsRequest()
    for n in range(3):
        request.events.add(user_id=f"u{n}", event_type="x", message_id=f"m{n}")
    assert wire_checks.violations(request) == []
    request.events[1].message_id = "m\x00"
    request.events[2].event_time.seconds = 2**40
    request.events[2].event_time.nanos = 5
    assert wire_checks.violations(request) == [
        FieldViolation("events[1].message_id", "must not contain the character U+0000"),
        FieldViolation("events[2].event_time", "must be between years 1 and 9999"),
    ]
    assert wire_checks.violations(request, {"events"}) == [], "a batch's items are left out"


def test_timestamp_and_duration_ranges_are_those_of_their_definitions() -> None:
    def check(**fields: object) -> list[str]:
        message = wf.ActivateJobsRequest(**fields)  # type: ignore[arg-type]
        return [v.field for v in wire_checks.violations(message)]

    assert check(timeout={"seconds": 315_576_000_000}) == []
    assert check(timeout={"seconds": 315_576_000_001}) == ["timeout"]
    assert check(timeout={"seconds": -1, "nanos": -5}) == []
    assert check(timeout={"seconds": 1, "nanos": -5}) == ["timeout"], "nanos of another sign"
    assert check(timeout={"nanos": 1_000_000_000}) == ["timeout"]


def test_map_keys_and_values_are_checked() -> None:
    job = wf.ActivatedJob(custom_headers={"ok": "fine", "k\x00": "v"})
    assert [v.field for v in wire_checks.violations(job)] == ["custom_headers"]


@given(st.text(max_size=20), st.integers(0, 5))
def test_a_nul_anywhere_in_json_is_found_with_its_path(text: str, depth: int) -> None:
    value: Any = f"{text}\x00"
    path = ""
    for level in range(depth):
        value, path = ([0, value], f"[1]{path}") if level % 2 else ({"k": value}, f".k{path}")
    struct = struct_pb2.Struct()
    struct.update({"top": value})
    try:
        struct_to_dict(struct)
    except JsonValueError as error:
        assert error.path == f"top{path}"
    else:
        raise AssertionError("the NUL was not found")


def test_numbers_json_cannot_hold_are_refused() -> None:
    for number in (math.nan, math.inf, -math.inf):
        struct = struct_pb2.Struct()
        struct.update({"n": number})
        try:
            struct_to_dict(struct)
        except JsonValueError as error:
            assert (error.path, error.description) == ("n", "must be a finite number")
        else:
            raise AssertionError(f"{number} was taken")


@given(
    count=st.integers(1, 3000),
    field=st.text(max_size=300),
    description=st.text(max_size=3000),
)
def test_every_status_fits_and_counts_what_it_does_not_list(
    count: int, field: str, description: str
) -> None:
    error = InvalidArgument([FieldViolation(f"{field}{n}", description) for n in range(count)])
    status = to_status(error, "lifecycle.test")
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    encoded = status.details.encode()
    message = len(encoded) + 2 * sum(1 for b in encoded if b < 0x20 or b > 0x7E or b == 0x25)
    assert message + 4 * ((len(details) + 2) // 3) <= MAX_STATUS_BYTES
    named = status.details.split("; ")
    if count > len(named):
        assert named[-1] == f"and {count - len(named) + 1} more"
    assert len(named) <= MAX_LISTED_VIOLATIONS + 1


def test_a_long_message_is_cut() -> None:
    status = to_status(NotFound("x" * 100_000, metadata={"id": "y" * 100_000}), "lifecycle.test")
    assert len(status.details) < 1000
