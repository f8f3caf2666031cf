"""Group commit: calls that arrive while earlier ones are being written wait,
and the next free lane writes them together, set-based, in one go.

Under load a batch costs one database round trip (and one commit) for many
calls; a lone call is written at once. Each call still gets its own answer:
the write function returns a result or an exception per item; when it raises
for what an item may have caused, the batch is written in halves down to the
item at fault (runtime.isolation), and only an exception that is no item's
fault fails the whole batch. A batch runs in the context
of its first call, in a span of that call's trace linked to the other calls'
spans (the OpenTelemetry way to show one piece of work done for many).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import trace

from runtime.isolation import write_apart

T = TypeVar("T")
R = TypeVar("R")

# Writes a batch: one result or exception per item, in order.
BatchWriter = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    weight: int
    done: asyncio.Future[R]
    context: contextvars.Context


class GroupCommit(Generic[T, R]):
    """Runs `write` on at most `lanes` batches at a time, each of at most
    `max_weight` (an item's weight is its size: events in a call, say). Another
    lane opens only for a backlog of `backlog_per_lane` or more: small calls are
    cheaper written together, big ones gain from one lane preparing while
    another waits for the database."""

    def __init__(
        self,
        write: BatchWriter[T, R],
        *,
        name: str,
        tracer: trace.Tracer,
        lanes: int,
        max_weight: int,
        backlog_per_lane: int = 1,
        weight: Callable[[T], int] = lambda _: 1,
    ) -> None:
        self._write = write
        self._name = name
        self._tracer = tracer
        self._lanes = lanes
        self._max_weight = max_weight
        self._backlog = backlog_per_lane
        self._weight = weight
        self._busy = 0
        self._waiting: deque[_Waiting[T, R]] = deque()
        self._waiting_weight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: T) -> asyncio.Future[R]:
        """The item's result, once its batch is written."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        weight = self._weight(item)
        self._waiting.append(_Waiting(item, weight, done, contextvars.copy_context()))
        self._waiting_weight += weight
        self._dispatch()
        return done

    def _open_lane(self) -> bool:
        if not self._waiting or self._busy >= self._lanes:
            return False
        return self._busy == 0 or self._waiting_weight >= self._backlog

    def _dispatch(self) -> None:
        while self._open_lane():
            batch = [self._waiting.popleft()]
            weight = batch[0].weight
            while self._waiting and weight + self._waiting[0].weight <= self._max_weight:
                weight += self._waiting[0].weight
                batch.append(self._waiting.popleft())
            self._waiting_weight -= weight
            self._busy += 1
            task = asyncio.create_task(self._run(batch), context=batch[0].context)
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._busy -= 1
        self._dispatch()

    async def _run(self, batch: list[_Waiting[T, R]]) -> None:
        links = [
            trace.Link(waiting.context.run(trace.get_current_span).get_span_context())
            for waiting in batch[1:]
        ]
        try:
            with self._tracer.start_as_current_span(
                self._name, links=links, attributes={"batch.size": len(batch)}
            ):
                parts = await write_apart([waiting.item for waiting in batch], self._write)
            results: list[R | BaseException] = []
            for part in parts:
                results += [part.error] if part.error is not None else part.result or []
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.done.cancel()
            raise
        except Exception as error:
            results = [error] * len(batch)
        for waiting, result in zip(batch, results, strict=True):
            if waiting.done.done():
                continue
            if isinstance(result, BaseException):
                waiting.done.set_exception(result)
            else:
                waiting.done.set_result(result)
