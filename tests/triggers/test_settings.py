"""The triggers service's settings: defaults, and each bad value named."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runtime.config import ConfigError
from services.triggers.settings import TriggerSettings, load_settings


def test_defaults_and_values() -> None:
    assert load_settings({}) == TriggerSettings()
    chosen = load_settings(
        {
            "LIFECYCLE_TRIGGERS_MESSAGE_TTL_SECONDS": "0",
            "LIFECYCLE_TRIGGERS_INGEST_LANES": "2",
            "LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS": "7",
        }
    )
    assert chosen == TriggerSettings(timedelta(0), 2, timedelta(days=7))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIFECYCLE_TRIGGERS_MESSAGE_TTL_SECONDS", "-1"),
        ("LIFECYCLE_TRIGGERS_MESSAGE_TTL_SECONDS", "31622400"),
        ("LIFECYCLE_TRIGGERS_INGEST_LANES", "0"),
        ("LIFECYCLE_TRIGGERS_INGEST_LANES", "1.5"),
        ("LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS", "soon"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(
            {
                "LIFECYCLE_TRIGGERS_INGEST_LANES": "0",
                "LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS": "soon",
            }
        )
    assert "LIFECYCLE_TRIGGERS_INGEST_LANES" in str(refused.value)
    assert "LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS" in str(refused.value)
