"""The workflows service's pure rules: versions, status moves, job keys,
retries and their backoff, the waves a batch of messages is published in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.workflows.domain import (
    ACTIVE,
    ARCHIVED,
    DRAFT,
    INACTIVE,
    MAX_VARIABLES_BYTES,
    RETRY_BACKOFF_MAX,
    JobKey,
    backoff,
    can_move,
    job_key,
    next_version,
    parse_job_key,
    publish_waves,
    retries_after_failure,
    retry_at,
    variables_problems,
)
from services.workflows.expressions import MAX_VALUE_DEPTH

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("current", "expected"),
    [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("2.9.0", "2.10.0"), ("1.4.7", "1.5.0")],
)
def test_a_changed_bpmn_is_the_next_minor_version(current: str, expected: str) -> None:
    assert next_version(current) == expected


def test_next_version_refuses_what_is_not_a_version() -> None:
    with pytest.raises(ValueError):
        next_version("1.0")


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (DRAFT, ACTIVE, True),
        (INACTIVE, ACTIVE, True),
        (ACTIVE, INACTIVE, True),
        (DRAFT, ARCHIVED, True),
        (INACTIVE, ARCHIVED, True),
        (ACTIVE, ACTIVE, True),
        (ARCHIVED, ARCHIVED, True),
        (ACTIVE, ARCHIVED, False),
        (DRAFT, INACTIVE, False),
        (ARCHIVED, ACTIVE, False),
        (ARCHIVED, INACTIVE, False),
    ],
)
def test_status_moves(current: str, target: str, allowed: bool) -> None:
    assert can_move(current, target) is allowed


def test_a_job_key_names_its_execution_and_token() -> None:
    execution_id = uuid.uuid4()
    key = job_key(execution_id, 7)
    assert key == f"{execution_id}.7"
    assert parse_job_key(key) == JobKey(execution_id, 7)


@pytest.mark.parametrize("key", ["", "nonsense", f"{uuid.uuid4()}", f"{uuid.uuid4()}.x", "1.2"])
def test_what_is_not_a_job_key_parses_to_none(key: str) -> None:
    assert parse_job_key(key) is None


def test_backoff_doubles_from_one_second_up_to_ten_minutes() -> None:
    assert [backoff(n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff(0) == backoff(1) == timedelta(seconds=1)
    assert backoff(10) == timedelta(seconds=512)
    assert backoff(11) == timedelta(seconds=RETRY_BACKOFF_MAX) == timedelta(minutes=10)
    assert backoff(1000) == timedelta(minutes=10)


def test_a_failed_job_with_retries_left_comes_back_after_the_next_backoff() -> None:
    # Failed twice before: this is the third failure, 4 s.
    assert retry_at(2, 1, None, NOW) == NOW + timedelta(seconds=4)
    assert retry_at(0, 5, None, NOW) == NOW + timedelta(seconds=1)


def test_the_backoff_a_worker_asks_for_wins() -> None:
    assert retry_at(5, 1, timedelta(seconds=3), NOW) == NOW + timedelta(seconds=3)


def test_a_failed_job_without_retries_left_is_not_retried() -> None:
    assert retry_at(0, 0, None, NOW) is None
    assert retry_at(3, 0, timedelta(seconds=3), NOW) is None


def test_a_built_in_job_spends_a_retry_only_when_retrying_may_help() -> None:
    assert retries_after_failure(3, retryable=True) == 2
    assert retries_after_failure(1, retryable=True) == 0
    assert retries_after_failure(3, retryable=False) == 0


def test_messages_go_in_waves_of_one_per_user_in_order() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert publish_waves([a, b, a, c, a, b]) == [[0, 1, 3], [2, 5], [4]]
    assert publish_waves([a, b, c]) == [[0, 1, 2]]
    assert publish_waves([]) == []


def test_variables_a_request_brings_are_checked() -> None:
    assert variables_problems({"plan": "pro", "seats": [1, 2]}) == []
    assert variables_problems({"user": 1, "now": 2, "ok": 3}) == [
        "now, user are reserved names (see docs/workflows.md)"
    ]
    assert variables_problems({"big": "x" * MAX_VARIABLES_BYTES}) == [
        f"must be at most {MAX_VARIABLES_BYTES} bytes as JSON"
    ]
    deep: Any = 1
    for _ in range(MAX_VALUE_DEPTH + 1):
        deep = [deep]
    assert variables_problems({"deep": deep}) == [
        f"a value nests lists and maps more than {MAX_VALUE_DEPTH} deep"
    ]
