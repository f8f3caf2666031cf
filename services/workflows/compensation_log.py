"""An execution's compensation records (docs/workflows.md, "Compensation"):
one per completion of an activity with a compensation boundary event, in
completion order, kept with the execution's state (table `compensations`,
store/compensations.py) and changed by the interpreter
(interpreter_compensation.py). No I/O.

A record names the activity and the scope tokens it completed in, innermost
first, with their elements: a compensation throw event in scope S compensates
the records completed in S, and in the sub-processes of S that completed
(their tokens are gone, and were not terminated: a terminated scope's records
are dropped). A record claimed by a throw event's token (`thrower`) waits for
its handler; compensated, it is dropped, so no handler runs twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A scope token and its element (a sub-process, or a multi-instance body).
ScopeRef = tuple[int, str]


@dataclass
class Compensable:
    seq: int
    element: str
    scopes: tuple[ScopeRef, ...]
    completed_at: datetime
    thrower: int | None = None

    def path_from(self, scope: int | None, alive: Collection[int]) -> list[ScopeRef] | None:
        """The completed scopes between `scope` and this record, innermost
        first; None when a throw in `scope` does not reach it (it is not in
        `scope`, or a scope between is still running)."""
        between: list[ScopeRef] = []
        for ref in self.scopes:
            if ref[0] == scope:
                return between
            if ref[0] in alive:
                return None
            between.append(ref)
        return between if scope is None else None


@dataclass
class CompensationLog:
    records: dict[int, Compensable] = field(default_factory=dict)
    # Changed since loaded (to write), not stored yet, and dropped.
    changed: set[int] = field(default_factory=set)
    fresh: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)

    @classmethod
    def load(cls, rows: Iterable[list[Any]]) -> CompensationLog:
        """From the stored rows: [seq, element, scopes, completed_at, thrower]."""
        records = {
            seq: Compensable(seq, element, tuple((s[0], s[1]) for s in scopes), _time(at), thrower)
            for seq, element, scopes, at, thrower in rows
        }
        return cls(records)

    def add(self, element: str, scopes: tuple[ScopeRef, ...], at: datetime) -> None:
        # After the rows this step drops too: one statement never inserts and deletes a row.
        seq = max((*self.records, *self.dropped), default=0) + 1
        self.records[seq] = Compensable(seq, element, scopes, at)
        self.changed.add(seq)
        self.fresh.add(seq)

    def claim(self, record: Compensable, thrower: int) -> None:
        record.thrower = thrower
        self.changed.add(record.seq)

    def drop(self, seq: int) -> None:
        del self.records[seq]
        self.changed.discard(seq)
        if seq in self.fresh:
            self.fresh.discard(seq)
        else:
            self.dropped.add(seq)

    def drop_scope(self, scope: int) -> None:
        """A scope token was terminated: what completed in it is not compensable."""
        if not self.records:
            return
        for seq in [s for s, r in self.records.items() if any(t == scope for t, _ in r.scopes)]:
            self.drop(seq)

    def running(self, thrower: int) -> Compensable | None:
        """The record whose handler the throw at token `thrower` runs (the
        latest completion it claimed that is not compensated yet)."""
        claimed = [r for r in self.records.values() if r.thrower == thrower]
        return max(claimed, key=lambda r: r.seq, default=None)

    def to_write(self) -> list[Compensable]:
        return [self.records[seq] for seq in sorted(self.changed)]


def _time(value: datetime | str) -> datetime:
    """A completion time, as JSON gives it (ISO-8601) or as it is."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value
