"""Settings of the triggers service, from environment variables (docs/triggers.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from runtime.config import ConfigError

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


def _number(env: Mapping[str, str], name: str, default: float, *, positive: bool) -> float:
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (positive and value == 0):
        kind = "a positive number" if positive else "a number >= 0"
        raise ConfigError(f"{name}={raw!r} is not {kind}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> TriggerSettings:
    env = os.environ if env is None else env
    defaults = TriggerSettings()
    lanes = _number(env, INGEST_LANES_VARIABLE, defaults.ingest_lanes, positive=True)
    if lanes != int(lanes):
        raise ConfigError(f"{INGEST_LANES_VARIABLE}={lanes!r} is not a whole number")
    ttl = timedelta(
        seconds=_number(
            env, MESSAGE_TTL_VARIABLE, defaults.message_ttl.total_seconds(), positive=False
        )
    )
    if ttl > MAX_MESSAGE_TTL:
        raise ConfigError(f"{MESSAGE_TTL_VARIABLE} must be at most {MAX_MESSAGE_TTL.days} days")
    retention = defaults.event_retention.days
    return TriggerSettings(
        message_ttl=ttl,
        ingest_lanes=int(lanes),
        event_retention=timedelta(
            days=_number(env, EVENT_RETENTION_VARIABLE, retention, positive=True)
        ),
    )
