"""Group commit: calls that arrive while a batch is written are written together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider

from runtime.group_commit import GroupCommit

TRACER = TracerProvider().get_tracer(__name__)


class Recorder:
    """A batch writer that holds each batch until released and answers per item;
    it fails whole a batch holding a poisoned item (what a value the database
    refuses does to a transaction)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_all = False
        self.poisoned: set[int] = set()

    async def write(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_all:
            raise ConnectionResetError("the database went away")
        if self.poisoned & set(items):
            raise ValueError("a poisoned item")
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


async def test_an_error_that_is_no_items_fault_fails_every_call_of_its_batch() -> None:
    recorder = Recorder()
    recorder.fail_all = True
    group = commit(recorder)
    futures = [group.submit(i) for i in (2, 4, 6)]
    recorder.release.set()
    for future in futures:
        with pytest.raises(ConnectionResetError, match="went away"):
            await future
    assert recorder.batches == [[2], [4, 6]], "each batch tried once, not in parts"


async def test_a_batch_failing_for_one_item_is_written_in_halves_down_to_it() -> None:
    recorder = Recorder()
    recorder.poisoned = {6}
    recorder.release.set()
    group = commit(recorder)
    first = group.submit(0)
    await asyncio.sleep(0)
    results = await asyncio.gather(
        *(group.submit(i) for i in (2, 4, 6, 8, 10)), first, return_exceptions=True
    )
    assert results[:2] == [20, 40]
    assert isinstance(results[2], ValueError) and "poisoned" in str(results[2])
    assert results[3:] == [80, 100, 0]


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
