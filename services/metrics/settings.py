"""Settings of the metrics service, from environment variables (README, "Metrics")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.config import SettingsReader

ARCHIVE_VARIABLE = "LIFECYCLE_METRICS_ARCHIVE_URL"
ARCHIVE_ENDPOINT_VARIABLE = "LIFECYCLE_METRICS_ARCHIVE_S3_ENDPOINT"
INTERVAL_VARIABLE = "LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS"
LATE_DAYS_VARIABLE = "LIFECYCLE_METRICS_LATE_DAYS"


@dataclass(frozen=True)
class MetricsSettings:
    # Where the archives of old event partitions go: an absolute folder path, or
    # s3://bucket/prefix (credentials and region from the usual AWS_* variables).
    archive_url: str
    # The S3 API of an S3-compatible store (MinIO, Ceph, ...); None for AWS.
    archive_endpoint: str | None = None
    # Seconds between scheduled rollups; 0 turns the schedule off (`lifecycle
    # rollup` from cron, or RunRollup, then keeps the metrics up to date).
    rollup_interval: float = 300.0
    # Days before today the scheduled rollup recomputes, for late events.
    late_days: int = 3


def _archive_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme in ("", "file"):
        return str(Path(parts.path if parts.scheme else raw).resolve())
    if parts.scheme == "s3" and parts.netloc and not parts.query:
        return raw.rstrip("/")
    raise ValueError(raw)


def _days(raw: str) -> int:
    days = int(raw)
    if days < 0:
        raise ValueError(raw)
    return days


def load_settings(env: Mapping[str, str] | None = None) -> MetricsSettings:
    """The settings `env` (the process environment by default) gives; ConfigError
    names every bad value."""
    reader = SettingsReader(env)
    data_dir = Path(reader.text("LIFECYCLE_DATA_DIR", ".data"))
    defaults = MetricsSettings(str((data_dir / "metrics-archive").resolve()))
    settings = MetricsSettings(
        archive_url=reader.get(
            ARCHIVE_VARIABLE,
            defaults.archive_url,
            _archive_url,
            "a folder (a path or file:// URL) or an S3 bucket (s3://bucket/prefix)",
        ),
        archive_endpoint=reader.text(ARCHIVE_ENDPOINT_VARIABLE, "") or None,
        rollup_interval=reader.seconds(
            INTERVAL_VARIABLE, defaults.rollup_interval, zero_allowed=True
        ),
        late_days=reader.get(
            LATE_DAYS_VARIABLE, defaults.late_days, _days, "a whole number of days"
        ),
    )
    reader.check()
    return settings
