"""runtime.isolation: a batch that fails for one item's fault is written in
halves down to that item; failures that are no item's fault fail it whole."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import Unavailable
from runtime.isolation import item_fault, refused_value, write_apart


class Store:
    """Writes batches all or nothing, failing any that holds a bad item."""

    def __init__(self, bad: set[int], error: Exception) -> None:
        self.bad = bad
        self.error = error
        self.written: list[int] = []
        self.attempts = 0

    async def write(self, items: Sequence[int]) -> int:
        self.attempts += 1
        if self.bad & set(items):
            raise self.error
        self.written += items
        return len(items)


def refused() -> Exception:
    return asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding")


@given(
    size=st.integers(1, 300),
    bad=st.sets(st.integers(0, 299), max_size=5),
)
async def test_every_item_but_the_bad_ones_is_written_once(size: int, bad: set[int]) -> None:
    bad = {b for b in bad if b < size}
    store = Store(bad, refused())
    parts = await write_apart(list(range(size)), store.write)
    assert sorted(store.written) == [n for n in range(size) if n not in bad]
    assert [item for part in parts for item in part.items] == list(range(size))
    assert {part.items[0] for part in parts if part.error is not None} == bad
    assert all(len(part.items) == 1 for part in parts if part.error is not None)
    # Halving costs about two attempts per level per bad item.
    assert store.attempts <= 1 + 2 * len(bad) * max(1, size.bit_length())


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.PostgresConnectionError("gone"),
        asyncpg.SerializationError("conflict"),
        asyncpg.QueryCanceledError("statement timeout"),
        OSError("connection reset"),
        Unavailable("users is down"),
    ],
)
async def test_a_failure_that_is_no_items_fault_fails_the_whole_batch(error: Exception) -> None:
    assert not item_fault(error)
    store = Store({3}, error)
    with pytest.raises(type(error)):
        await write_apart(list(range(10)), store.write)
    assert store.attempts == 1


def test_which_database_errors_name_a_refused_value() -> None:
    assert refused_value(refused()) is not None
    assert refused_value(asyncpg.CheckViolationError("check")) is not None
    assert refused_value(asyncpg.UniqueViolationError("a concurrent insert")) is None
    assert refused_value(asyncpg.UndefinedColumnError("a bug of ours")) is None
    assert refused_value(KeyError("x")) is None
    assert item_fault(KeyError("x")), "a bug an item triggers still fails that item alone"
