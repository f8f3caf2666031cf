"""The metrics service's settings: defaults, values, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError
from services.metrics.settings import (
    ARCHIVE_ENDPOINT_VARIABLE,
    ARCHIVE_VARIABLE,
    INTERVAL_VARIABLE,
    LATE_DAYS_VARIABLE,
    MetricsSettings,
    load_settings,
)


def test_defaults_and_values(tmp_path: Path) -> None:
    assert load_settings({"LIFECYCLE_DATA_DIR": str(tmp_path)}) == MetricsSettings(
        str(tmp_path / "metrics-archive"), None, rollup_interval=300.0, late_days=3
    )
    chosen = load_settings(
        {
            ARCHIVE_VARIABLE: "s3://cold/events/",
            ARCHIVE_ENDPOINT_VARIABLE: "http://127.0.0.1:9000",
            INTERVAL_VARIABLE: "0",
            LATE_DAYS_VARIABLE: "0",
        }
    )
    assert chosen == MetricsSettings(
        "s3://cold/events", "http://127.0.0.1:9000", rollup_interval=0, late_days=0
    )
    assert load_settings({ARCHIVE_VARIABLE: f"file://{tmp_path}/a"}).archive_url == str(
        tmp_path / "a"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (ARCHIVE_VARIABLE, "ftp://host/folder"),
        (ARCHIVE_VARIABLE, "s3://"),
        (INTERVAL_VARIABLE, "-1"),
        (INTERVAL_VARIABLE, "often"),
        (LATE_DAYS_VARIABLE, "1.5"),
        (LATE_DAYS_VARIABLE, "-1"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({INTERVAL_VARIABLE: "soon", LATE_DAYS_VARIABLE: "a week"})
    message = str(refused.value)
    assert f"{INTERVAL_VARIABLE}='soon' is not a number of seconds" in message
    assert f"{LATE_DAYS_VARIABLE}='a week' is not a whole number of days" in message
