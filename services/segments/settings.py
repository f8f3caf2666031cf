"""Settings of the segments service, from environment variables (README, "Segments")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from runtime.config import ConfigError

REFRESH_VARIABLE = "LIFECYCLE_SEGMENTS_REFRESH_SECONDS"
MIN_REFRESH_VARIABLE = "LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS"
TTL_VARIABLE = "LIFECYCLE_SEGMENTS_MEMBERSHIP_TTL_SECONDS"
SCHEDULER_VARIABLE = "LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS"
MATCH_TIMEOUT_VARIABLE = "LIFECYCLE_SEGMENTS_MATCH_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class SegmentSettings:
    # How often the scheduler recomputes each segment in full; sooner when a user
    # may enter by time alone (say, a time in stage passing): at that moment.
    refresh_interval: timedelta = timedelta(minutes=5)
    # But never sooner than this after the last: entry moments spread over time
    # (a last-seen date leaving a window) would be seconds apart, and each would
    # cost a full refresh. A user who enters by time alone enters at most this
    # late; exits stay exact (valid_until).
    min_refresh_gap: timedelta = timedelta(seconds=30)
    # The longest a cached membership is trusted when time alone cannot change it;
    # changes of users reach the cache at once (ReevaluateUsers), so this is a
    # safety net, not the freshness.
    membership_ttl: timedelta = timedelta(hours=1)
    # How often the scheduler looks for due segments and expired memberships;
    # zero turns it off (RefreshSegment then keeps segments fresh).
    scheduler_interval: float = 5.0
    # Deadline of one MatchUserIds stream (a refresh of every user).
    match_timeout: float = 120.0


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero_allowed: bool) -> float:
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero_allowed):
        kind = "a number of seconds" if zero_allowed else "a positive number of seconds"
        raise ConfigError(f"{name}={raw!r} is not {kind}")
    return value


def _duration(
    env: Mapping[str, str], name: str, default: timedelta, *, zero_allowed: bool
) -> timedelta:
    seconds = _seconds(env, name, default.total_seconds(), zero_allowed=zero_allowed)
    return timedelta(seconds=seconds)


def load_settings(env: Mapping[str, str] | None = None) -> SegmentSettings:
    env = os.environ if env is None else env
    defaults = SegmentSettings()
    return SegmentSettings(
        refresh_interval=_duration(
            env, REFRESH_VARIABLE, defaults.refresh_interval, zero_allowed=False
        ),
        min_refresh_gap=_duration(
            env, MIN_REFRESH_VARIABLE, defaults.min_refresh_gap, zero_allowed=True
        ),
        membership_ttl=_duration(env, TTL_VARIABLE, defaults.membership_ttl, zero_allowed=False),
        scheduler_interval=_seconds(
            env, SCHEDULER_VARIABLE, defaults.scheduler_interval, zero_allowed=True
        ),
        match_timeout=_seconds(
            env, MATCH_TIMEOUT_VARIABLE, defaults.match_timeout, zero_allowed=False
        ),
    )
