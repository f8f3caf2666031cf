"""Group commit: calls that arrive while a batch is written are written together."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider

from runtime.group_commit import GroupCommit

TRACER = TracerProvider().get_tracer(__name__)


class Recorder:
    """A batch writer that holds each batch until released and answers per item."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_all = False

    async def write(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_all:
            raise RuntimeError("the database went away")
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def commit(recorder: Recorder, lanes: int = 1, max_weight: int = 100) -> GroupCommit[int, int]:
    return GroupCommit(
        recorder.write, name="test batch", tracer=TRACER, lanes=lanes, max_weight=max_weight
    )


async def test_calls_that_wait_are_written_together_each_with_its_own_answer() -> None:
    recorder = Recorder()
    group = commit(recorder)
    futures = [group.submit(i) for i in range(6)]
    await asyncio.sleep(0)
    recorder.release.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        0, "odd 1", 20, "odd 3", 40, "odd 5",
    ]  # fmt: skip


async def test_batches_respect_the_weight_limit_and_the_lanes() -> None:
    recorder = Recorder()
    group = commit(recorder, lanes=2, max_weight=2)
    futures = [group.submit(i * 2) for i in range(7)]
    await asyncio.sleep(0)
    assert recorder.batches == [[0], [2]]
    recorder.release.set()
    await asyncio.gather(*futures)
    assert recorder.batches[2:] == [[4, 6], [8, 10], [12]]
    assert sorted(i for batch in recorder.batches for i in batch) == [0, 2, 4, 6, 8, 10, 12]


async def test_an_error_of_the_writer_fails_every_call_of_its_batch() -> None:
    recorder = Recorder()
    recorder.fail_all = True
    group = commit(recorder)
    futures = [group.submit(i) for i in (2, 4)]
    recorder.release.set()
    for future in futures:
        with pytest.raises(RuntimeError, match="went away"):
            await future


async def test_a_cancelled_batch_cancels_its_calls_and_a_cancelled_call_spares_the_batch() -> None:
    recorder = Recorder()
    group = commit(recorder)
    first = group.submit(2)
    await asyncio.sleep(0)
    second, third = group.submit(4), group.submit(6)
    second.cancel()
    (task,) = group._tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    recorder.release.set()
    assert await third == 60
    assert recorder.batches == [[2], [4, 6]]
