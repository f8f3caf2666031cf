"""Settings of the segments service, from environment variables (README, "Segments")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from runtime.config import SettingsReader

REFRESH_VARIABLE = "LIFECYCLE_SEGMENTS_REFRESH_SECONDS"
MIN_REFRESH_VARIABLE = "LIFECYCLE_SEGMENTS_MIN_REFRESH_SECONDS"
TTL_VARIABLE = "LIFECYCLE_SEGMENTS_MEMBERSHIP_TTL_SECONDS"
SCHEDULER_VARIABLE = "LIFECYCLE_SEGMENTS_SCHEDULER_SECONDS"
MATCH_TIMEOUT_VARIABLE = "LIFECYCLE_SEGMENTS_MATCH_TIMEOUT_SECONDS"
SIZE_RETENTION_VARIABLE = "LIFECYCLE_SEGMENTS_SIZE_RETENTION_DAYS"
MAX_SIZE_RETENTION_DAYS = 36_525


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
    # How long each day's member count (segment_sizes) is kept: longer than the
    # longest range ListSegmentSizes answers (366 days).
    size_retention: timedelta = timedelta(days=400)


def _days(raw: str) -> timedelta:
    days = int(raw)
    # A century at most: today less the retention must still be a date.
    if not 0 < days <= MAX_SIZE_RETENTION_DAYS:
        raise ValueError(raw)
    return timedelta(days=days)


def load_settings(env: Mapping[str, str] | None = None) -> SegmentSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    defaults = SegmentSettings()
    settings = SegmentSettings(
        refresh_interval=reader.duration(REFRESH_VARIABLE, defaults.refresh_interval),
        min_refresh_gap=reader.duration(
            MIN_REFRESH_VARIABLE, defaults.min_refresh_gap, zero_allowed=True
        ),
        membership_ttl=reader.duration(TTL_VARIABLE, defaults.membership_ttl),
        scheduler_interval=reader.seconds(
            SCHEDULER_VARIABLE, defaults.scheduler_interval, zero_allowed=True
        ),
        match_timeout=reader.seconds(MATCH_TIMEOUT_VARIABLE, defaults.match_timeout),
        size_retention=reader.get(
            SIZE_RETENTION_VARIABLE,
            defaults.size_retention,
            _days,
            f"a whole number of days from 1 to {MAX_SIZE_RETENTION_DAYS}",
        ),
    )
    reader.check()
    return settings
