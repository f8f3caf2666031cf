"""Settings of the users service, from environment variables (README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from conditions.model import EVENT_RETENTION
from runtime.config import SettingsReader

CONDITION_TIMEOUT_VARIABLE = "LIFECYCLE_USERS_CONDITION_TIMEOUT_SECONDS"
EVENT_RETENTION_VARIABLE = "LIFECYCLE_USERS_EVENT_RETENTION_DAYS"


@dataclass(frozen=True)
class UserSettings:
    # How long a condition's SQL may run (MatchUserIds, CountUsers) before it is cancelled.
    condition_timeout: float = 60.0
    # How long people's tracked events are kept (user_events); never shorter than
    # the longest window a condition may read (conditions.model.EVENT_RETENTION).
    event_retention: timedelta = EVENT_RETENTION


def load_settings(env: Mapping[str, str] | None = None) -> UserSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    defaults = UserSettings()
    settings = UserSettings(
        condition_timeout=reader.seconds(CONDITION_TIMEOUT_VARIABLE, defaults.condition_timeout),
        event_retention=event_retention(reader, defaults.event_retention),
    )
    reader.check()
    return settings


def event_retention(reader: SettingsReader, default: timedelta) -> timedelta:
    """The retention in days, refused when shorter than a condition's longest window."""
    days = reader.count(EVENT_RETENTION_VARIABLE, default.days)
    if days < EVENT_RETENTION.days:
        reader.problems.append(
            f"{EVENT_RETENTION_VARIABLE}={days} is shorter than the longest window a"
            f" condition may read ({EVENT_RETENTION.days} days)"
        )
    return timedelta(days=days)
