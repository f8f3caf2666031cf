"""One item's fault fails that item alone.

Batches and group commits write many items in one transaction, so a single
item the database refuses (a value it cannot store, a CHECK it fails) or the
code cannot handle would fail every other item with it. `write_apart` writes
the batch and, when the write fails for a reason an item can cause, halves it
and writes each half again, down to the item at fault: k bad items among n
cost about 2·k·log2(n) extra transactions, and the others are written as if
they had come alone. Failures that are nobody's item (the database gone, a
conflict with a concurrent transaction, an error a service raised on purpose)
fail the whole batch as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from runtime.errors import InvalidArgument, ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)
CONFLICTS = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# The database's own state, not a value: load, limits of the server, an operator.
_SERVER_STATE = (
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.QueryCanceledError,
    asyncpg.LockNotAvailableError,
)
# SQLSTATEs a value of a request can cause: class 22 (data exception), 54
# (program limit exceeded: an index row too large, ...), and the two integrity
# violations no concurrent writer can cause (unique and foreign keys can race).
_CONTENT_CLASSES = ("22", "54")
_CONTENT_STATES = frozenset({"23502", "23514"})
_MAX_DETAIL = 200


def database_lost(error: BaseException) -> bool:
    """asyncpg raises InterfaceError both for a closed connection or pool and for
    a mistake in our own code (say, a wrong number of query arguments); only the
    first is the database going away, the second must surface as INTERNAL."""
    if isinstance(error, _UNAVAILABLE):
        return True
    return isinstance(error, asyncpg.InterfaceError) and (
        "is closed" in str(error) or "is closing" in str(error)
    )


def item_fault(error: BaseException) -> bool:
    """Whether an item of the batch may have caused `error`, so that writing the
    batch in parts finds it: anything but an unreachable database, a conflict,
    the server's own state, or an error a service raised on purpose."""
    if not isinstance(error, Exception) or isinstance(error, ServiceError):
        return False
    return not (database_lost(error) or isinstance(error, CONFLICTS + _SERVER_STATE))


def refused_value(error: BaseException) -> str | None:
    """Why the database refused a value, when `error` says it did: the SQLSTATE's
    condition and the server's message, cut short; None for other errors."""
    if isinstance(error, asyncpg.InterfaceError) and isinstance(error, ValueError):
        # asyncpg's own DataError: an argument it cannot encode (an integer out of range, ...).
        return f"holds a value that cannot be stored: {_first_line(error)}"
    if not isinstance(error, asyncpg.PostgresError):
        return None
    state = error.sqlstate or ""
    if state[:2] in _CONTENT_CLASSES or state in _CONTENT_STATES:
        return f"was refused by the database: {_first_line(error)}"
    return None


def refusal_text(error: BaseException) -> str:
    """What the caller is told of an item that failed alone."""
    return refused_value(error) or "could not be written: an internal error (logged)"


def content_error(error: BaseException, field: str) -> InvalidArgument | None:
    """The caller's INVALID_ARGUMENT for a value the database refused, under `field`."""
    reason = refused_value(error)
    return None if reason is None else InvalidArgument.field(field, reason)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= _MAX_DETAIL else f"{line[:_MAX_DETAIL]}…"


@dataclass(frozen=True)
class Part(Generic[T, R]):
    """Items written together and their result, or one item and its error."""

    items: Sequence[T]
    result: R | None = None
    error: Exception | None = None


async def write_apart(
    items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[R]]
) -> list[Part[T, R]]:
    """Writes `items` with `write` (one transaction, all or nothing) and, when it
    fails for an item's fault, each half alone, recursively. The parts come back
    in the items' order; only a failure that is no item's fault is raised."""
    try:
        return [Part(items, await write(items))]
    except Exception as error:
        if not items or not item_fault(error):
            raise
        if len(items) == 1:
            if refused_value(error) is None:
                log.error("an item could not be written", exc_info=error)
            return [Part(items, error=error)]
    middle = len(items) // 2
    return [*await write_apart(items[:middle], write), *await write_apart(items[middle:], write)]
