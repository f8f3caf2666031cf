"""The services' time. Production runs on the system clock; tests pass a clock
they move, so that days pass in milliseconds. Workers that sleep until a
moment listen for those moves instead of sleeping through them."""

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


SYSTEM_CLOCK = SystemClock()


class _Moved:
    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _moved(self) -> None:
        for listener in self._listeners:
            listener()


class ManualClock(_Moved):
    """Stands still until the test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__()
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment
        self._moved()

    def advance(self, delta: timedelta) -> None:
        self.set(self._now + delta)


class ShiftedClock(_Moved):
    """Real time, shifted by an offset the test moves."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        self._moved()

    def reset(self) -> None:
        self.offset = timedelta(0)
        self._moved()
