"""Settings of the triggers service, from environment variables (docs/triggers.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from runtime.config import SettingsReader

MESSAGE_TTL_VARIABLE = "LIFECYCLE_TRIGGERS_MESSAGE_TTL_SECONDS"
INGEST_LANES_VARIABLE = "LIFECYCLE_TRIGGERS_INGEST_LANES"
EVENT_RETENTION_VARIABLE = "LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS"
# The longest time_to_live the workflows service accepts.
MAX_MESSAGE_TTL = timedelta(days=365)


@dataclass(frozen=True)
class TriggerSettings:
    # How long the workflows service keeps an event's message for an execution
    # that starts waiting for it later (Zeebe's default TTL); 0: only the
    # executions waiting when it arrives get it.
    message_ttl: timedelta = timedelta(hours=1)
    # Ingest batches written at once. Calls that arrive while every lane is
    # busy are written together by the next free lane (group commit).
    ingest_lanes: int = 4
    # How long stored events (and so their message_ids) are kept.
    event_retention: timedelta = timedelta(days=30)


def _days(raw: str) -> timedelta:
    days = float(raw)
    # Also refuses what a timedelta cannot hold (and NaN).
    if not 0 < days <= timedelta.max.days:
        raise ValueError(raw)
    return timedelta(days=days)


def load_settings(env: Mapping[str, str] | None = None) -> TriggerSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    defaults = TriggerSettings()
    settings = TriggerSettings(
        message_ttl=reader.duration(MESSAGE_TTL_VARIABLE, defaults.message_ttl, zero_allowed=True),
        ingest_lanes=reader.count(INGEST_LANES_VARIABLE, defaults.ingest_lanes),
        event_retention=reader.get(
            EVENT_RETENTION_VARIABLE, defaults.event_retention, _days, "a positive number of days"
        ),
    )
    if settings.message_ttl > MAX_MESSAGE_TTL:
        reader.problem(f"{MESSAGE_TTL_VARIABLE} must be at most {MAX_MESSAGE_TTL.days} days")
    reader.check()
    return settings
