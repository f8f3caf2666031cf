"""Settings of the users service, from environment variables (README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runtime.config import SettingsReader

CONDITION_TIMEOUT_VARIABLE = "LIFECYCLE_USERS_CONDITION_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class UserSettings:
    # How long a condition's SQL may run (MatchUserIds, CountUsers) before it is cancelled.
    condition_timeout: float = 60.0


def load_settings(env: Mapping[str, str] | None = None) -> UserSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    defaults = UserSettings()
    settings = UserSettings(
        condition_timeout=reader.seconds(CONDITION_TIMEOUT_VARIABLE, defaults.condition_timeout)
    )
    reader.check()
    return settings
