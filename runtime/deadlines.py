"""The deadline of the call being served, so that calls made on its behalf
inherit what is left of it (gRPC Python does not propagate deadlines)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("lifecycle_deadline", default=None)

# Leaves the caller time to handle our answer before its own deadline.
MARGIN_SECONDS = 0.05


@contextlib.contextmanager
def deadline_scope(time_remaining: float | None) -> Iterator[None]:
    token = _deadline.set(None if time_remaining is None else time.monotonic() + time_remaining)
    try:
        yield
    finally:
        _deadline.reset(token)


def timeout_for_call(default: float, margin: float = MARGIN_SECONDS) -> float:
    """Seconds to give an outgoing call (or a wait): the default, cut to what the
    incoming call has left less `margin`."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic() - margin))
