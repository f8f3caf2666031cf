"""The workflows service's settings: every bad value named at once."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError
from services.workflows.settings import (
    CAMPAIGN_PAGE_VARIABLE,
    MAX_BPMN_BYTES_VARIABLE,
    POLL_SECONDS_VARIABLE,
    TIMER_BATCH_VARIABLE,
    WorkflowSettings,
    load_settings,
)


def test_without_variables_the_defaults_hold() -> None:
    assert load_settings({}) == WorkflowSettings()
    assert WorkflowSettings().max_bpmn_bytes == 1 << 20


def test_the_variables_are_read() -> None:
    settings = load_settings(
        {MAX_BPMN_BYTES_VARIABLE: "2048", POLL_SECONDS_VARIABLE: "0.2", TIMER_BATCH_VARIABLE: "7"}
    )
    assert (settings.max_bpmn_bytes, settings.poll_seconds, settings.timer_batch) == (2048, 0.2, 7)


def test_every_bad_value_is_named() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(
            {
                MAX_BPMN_BYTES_VARIABLE: "lots",
                POLL_SECONDS_VARIABLE: "0",
                TIMER_BATCH_VARIABLE: "-3",
            }
        )
    message = str(raised.value)
    assert f"{MAX_BPMN_BYTES_VARIABLE}='lots'" in message
    assert f"{POLL_SECONDS_VARIABLE}='0'" in message
    assert f"{TIMER_BATCH_VARIABLE}='-3'" in message


def test_two_bad_values_are_both_named() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({POLL_SECONDS_VARIABLE: "soon", TIMER_BATCH_VARIABLE: "1.5"})
    assert POLL_SECONDS_VARIABLE in str(raised.value)
    assert TIMER_BATCH_VARIABLE in str(raised.value)
    assert MAX_BPMN_BYTES_VARIABLE not in str(raised.value)


def test_a_campaign_page_is_at_most_what_the_segments_service_gives() -> None:
    assert load_settings({CAMPAIGN_PAGE_VARIABLE: "50"}).campaign_page_size == 50
    with pytest.raises(ConfigError) as raised:
        load_settings({CAMPAIGN_PAGE_VARIABLE: "1001"})
    assert f"{CAMPAIGN_PAGE_VARIABLE} must be at most 1000" in str(raised.value)
