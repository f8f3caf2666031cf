"""The triggers service's background loop: the starter, which sends the
workflow starts and signal broadcasts that firings wrote (handlers.WorkflowStarts).

An ingest that committed starts wakes it. While the workflows service is
unreachable it rests, backing off, rather than trying again on every ingest
that wakes it (each round a claim and a reschedule).
"""

from __future__ import annotations

from runtime.worker import Pause, PollingWorker, Rest, doubling
from services.triggers.handlers import FIRST_RETRY_SECONDS, WorkflowStarts


class Starter(PollingWorker):
    name = "workflow-starter"

    def __init__(
        self,
        starts: WorkflowStarts,
        *,
        poll_interval: float,
        batch_size: int = 200,
        max_backoff_seconds: float = 60.0,
    ) -> None:
        super().__init__(poll_interval)
        self._starts = starts
        self._batch_size = batch_size
        self._max_backoff = max_backoff_seconds
        # Rounds in a row that found the workflows service unreachable.
        self._down_rounds = 0

    async def round(self) -> Pause:
        sent = await self._starts.send_due(self._batch_size)
        if sent.claimed:
            self._down_rounds = self._down_rounds + 1 if sent.unreachable else 0
        if self._down_rounds:
            return Rest(doubling(self._down_rounds, FIRST_RETRY_SECONDS, self._max_backoff))
        return 0 if sent.claimed >= self._batch_size else self.poll_interval
