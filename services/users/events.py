"""The types of people's tracked events, which the conditions' event leaves
read (docs/conditions.md, "What people did"): what the triggers service records
(RecordUserEvents), what a profile carries (BatchGetUserProfiles)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RecordedEvent:
    """An event the triggers service stored, for its user."""

    message_id: str
    user_id: uuid.UUID
    event_type: str
    occurred_at: datetime
    # A JSON object.
    data_json: str


@dataclass(frozen=True)
class StoredEvent:
    """An event as a profile carries it."""

    event_type: str
    occurred_at: datetime
    data_json: str


@dataclass(frozen=True)
class EventReads:
    """Which events a profile carries: of these exact types or type prefixes
    (`billing.` for `billing.*`), since `since` (every one kept when None)."""

    exact: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    since: datetime | None = None

    @classmethod
    def of(cls, types: Sequence[str], since: datetime | None) -> EventReads:
        return cls(
            tuple(kind for kind in types if not kind.endswith("*")),
            tuple(kind[:-1] for kind in types if kind.endswith("*")),
            since,
        )

    @property
    def empty(self) -> bool:
        return not (self.exact or self.prefixes)
