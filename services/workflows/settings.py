"""Settings of the workflows service, from environment variables (docs/workflows.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from runtime.config import SettingsReader

MAX_BPMN_BYTES_VARIABLE = "LIFECYCLE_WORKFLOWS_MAX_BPMN_BYTES"
POLL_SECONDS_VARIABLE = "LIFECYCLE_WORKFLOWS_POLL_SECONDS"
TIMER_BATCH_VARIABLE = "LIFECYCLE_WORKFLOWS_TIMER_BATCH"
CAMPAIGN_PAGE_VARIABLE = "LIFECYCLE_WORKFLOWS_CAMPAIGN_PAGE_SIZE"
# The most members ListSegmentMembers gives in a page.
MAX_CAMPAIGN_PAGE = 1000


@dataclass(frozen=True)
class WorkflowSettings:
    # The largest BPMN document accepted.
    max_bpmn_bytes: int = 1 << 20
    # The longest sleep of the timer and built-in job workers.
    poll_seconds: float = 1.0
    # Timers fired per transaction.
    timer_batch: int = 500
    # Built-in jobs claimed per round, and how long each is leased to the worker.
    builtin_job_batch: int = 100
    builtin_job_lease: timedelta = timedelta(seconds=60)
    # Segment members a campaign's cycle starts per transaction (campaigns.py).
    campaign_page_size: int = 500


def load_settings(env: Mapping[str, str] | None = None) -> WorkflowSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    defaults = WorkflowSettings()
    settings = WorkflowSettings(
        max_bpmn_bytes=reader.count(MAX_BPMN_BYTES_VARIABLE, defaults.max_bpmn_bytes),
        poll_seconds=reader.seconds(POLL_SECONDS_VARIABLE, defaults.poll_seconds),
        timer_batch=reader.count(TIMER_BATCH_VARIABLE, defaults.timer_batch),
        campaign_page_size=reader.count(CAMPAIGN_PAGE_VARIABLE, defaults.campaign_page_size),
    )
    if settings.campaign_page_size > MAX_CAMPAIGN_PAGE:
        reader.problem(f"{CAMPAIGN_PAGE_VARIABLE} must be at most {MAX_CAMPAIGN_PAGE}")
    reader.check()
    return settings
