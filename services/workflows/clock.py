"""The engine's time. Tests swap in a ManualClock and move days in milliseconds;
the timer worker listens for those moves instead of sleeping through them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """`listener` runs whenever time jumps (never for a clock that just flows)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def on_change(self, listener: Callable[[], None]) -> None:
        return None


class ManualClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return self._now

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def advance(self, delta: timedelta) -> None:
        self._now += delta
        for listener in self._listeners:
            listener()
