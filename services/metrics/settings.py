"""Settings of the metrics service, from environment variables (README, "Metrics")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.config import ConfigError

ARCHIVE_VARIABLE = "LIFECYCLE_METRICS_ARCHIVE_URL"
INTERVAL_VARIABLE = "LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS"
LATE_DAYS_VARIABLE = "LIFECYCLE_METRICS_LATE_DAYS"


@dataclass(frozen=True)
class MetricsSettings:
    # Folder the archives of old event partitions are written to.
    archive_folder: Path
    # Seconds between scheduled rollups; 0 turns the schedule off (`lifecycle
    # rollup` from cron, or RunRollup, then keeps the metrics up to date).
    rollup_interval: float
    # Days before today the scheduled rollup recomputes, for late events.
    late_days: int


def _archive_folder(raw: str) -> Path:
    parts = urlsplit(raw)
    if parts.scheme in ("", "file"):
        return Path(parts.path if parts.scheme else raw).resolve()
    raise ConfigError(
        f"{ARCHIVE_VARIABLE}={raw!r}: only a folder (a path or file:// URL) is supported;"
        " an S3-compatible bucket is not implemented yet"
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
        archive_folder=_archive_folder(archive),
        rollup_interval=_number(env, INTERVAL_VARIABLE, 300.0, whole=False),
        late_days=int(_number(env, LATE_DAYS_VARIABLE, 3, whole=True)),
    )
