"""Whether a server takes new calls, and the calls it is serving.

On stop a service first refuses new calls with UNAVAILABLE, which callers'
gRPC retries (on another replica when there is one), until the calls it took
have finished and no call has come for a moment; only then does it stop the
gRPC server. Stopping it sooner would answer CANCELLED, which no client
retries, to every call that had arrived but not yet reached a handler
(grpc/grpc#41785): under load, most of the calls a server holds wait there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from runtime.errors import Unavailable
from runtime.telemetry import traced

# No call for this long: gRPC holds none that a handler has not taken yet
# (one is taken within milliseconds once handlers answer at once).
QUIET_SECONDS = 0.1


class Admission:
    def __init__(self) -> None:
        self._open = True
        self._serving = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_call = 0.0

    @contextlib.contextmanager
    def call(self, method: str) -> Iterator[None]:
        """Around one call: refused once closed, counted while it runs. Probes
        and reflection pass (a health Watch would hold the stop for its grace)."""
        if not traced(method):
            yield
            return
        self._last_call = time.monotonic()
        if not self._open:
            raise Unavailable(
                "the service is shutting down; retry",
                reason="SHUTTING_DOWN",
                retry_elsewhere=True,
            )
        self._serving += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._serving -= 1
            if not self._serving:
                self._idle.set()

    async def close(self, grace: float) -> None:
        """Refuses new calls from now on; returns once the calls taken have
        finished and no call came for QUIET_SECONDS, or after `grace` seconds."""
        self._open = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while True:
                    await self._idle.wait()
                    quiet_for = QUIET_SECONDS - (time.monotonic() - self._last_call)
                    if quiet_for <= 0:
                        return
                    await asyncio.sleep(quiet_for)
