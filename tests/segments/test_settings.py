"""The segments service's settings: defaults, values, and each bad value named."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runtime.config import ConfigError
from services.segments.settings import SegmentSettings, load_settings


def test_defaults_and_values() -> None:
    assert load_settings({}) == SegmentSettings()
    assert SegmentSettings().min_refresh_gap == timedelta(seconds=30)
    chosen = load_settings(
        {
            "LIFECYCLE_SEGMENTS_REFRESH_SECONDS": "600",
            "LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS": "0",
            "LIFECYCLE_SEGMENTS_MEMBERSHIP_TTL_SECONDS": "60",
            "LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS": "0",
            "LIFECYCLE_SEGMENTS_MATCH_TIMEOUT_SECONDS": "1.5",
        }
    )
    assert chosen == SegmentSettings(
        refresh_interval=timedelta(minutes=10),
        min_refresh_gap=timedelta(0),
        membership_ttl=timedelta(minutes=1),
        scheduler_interval=0,
        match_timeout=1.5,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIFECYCLE_SEGMENTS_REFRESH_SECONDS", "0"),
        ("LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS", "-1"),
        ("LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS", "soon"),
        ("LIFECYCLE_SEGMENTS_MEMBERSHIP_TTL_SECONDS", "0"),
        ("LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS", "-5"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(
            {
                "LIFECYCLE_SEGMENTS_REFRESH_SECONDS": "0",
                "LIFECYCLE_SEGMENTS_MATCH_TIMEOUT_SECONDS": "soon",
            }
        )
    assert "LIFECYCLE_SEGMENTS_REFRESH_SECONDS" in str(refused.value)
    assert "LIFECYCLE_SEGMENTS_MATCH_TIMEOUT_SECONDS" in str(refused.value)
