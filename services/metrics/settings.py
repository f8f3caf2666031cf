"""Settings of the metrics service, from environment variables (README, "Metrics")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.config import ConfigError

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
    archive_endpoint: str | None
    # Seconds between scheduled rollups; 0 turns the schedule off (`lifecycle
    # rollup` from cron, or RunRollup, then keeps the metrics up to date).
    rollup_interval: float
    # Days before today the scheduled rollup recomputes, for late events.
    late_days: int


def _archive_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme in ("", "file"):
        return str(Path(parts.path if parts.scheme else raw).resolve())
    if parts.scheme == "s3" and parts.netloc and not parts.query:
        return raw.rstrip("/")
    raise ConfigError(
        f"{ARCHIVE_VARIABLE}={raw!r}: give a folder (a path or file:// URL)"
        " or an S3 bucket (s3://bucket/prefix)"
    )


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool) -> float:
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = -1
    if value < 0:
        kind = "a whole number of days" if whole else "a number of seconds"
        raise ConfigError(f"{name}={raw!r} is not {kind}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> MetricsSettings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("LIFECYCLE_DATA_DIR") or ".data")
    archive = env.get(ARCHIVE_VARIABLE) or str(data_dir / "metrics-archive")
    return MetricsSettings(
        archive_url=_archive_url(archive),
        archive_endpoint=env.get(ARCHIVE_ENDPOINT_VARIABLE) or None,
        rollup_interval=_number(env, INTERVAL_VARIABLE, 300.0, whole=False),
        late_days=int(_number(env, LATE_DAYS_VARIABLE, 3, whole=True)),
    )
