"""What the event leaves of triggers read: each person's tracked events, this
event included ("fire on purchase when it is the person's third in 30 days").

Events since the boundary (the service's event retention less two days: an
event is stored at most a day before the time it carries) come from the
service's own `events` table, which holds every event committed before the
batch, those still on their way to the users service too. Older ones come
from the users service's copy (BatchGetUserProfiles), kept 400 days; the two
parts meet at the boundary, so no event is counted twice. The batch's own
events count as they come, each with those before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import asyncpg

from conditions import EventLeaf, EventReads, PersonEvent, event_reads
from runtime.structs import DECIMAL_JSON
from services.triggers import store
from services.triggers.domain import Event
from services.triggers.peers import Users

# An event's time may be a day ahead of its arrival, and retention deletes by arrival.
_ARRIVAL_MARGIN = timedelta(days=2)


class PersonEvents:
    """Each user's events of the types some leaves read, as a batch goes on."""

    def __init__(
        self, leaves: Sequence[EventLeaf], known: dict[uuid.UUID, list[PersonEvent]], seen: set[str]
    ) -> None:
        self._leaves = leaves
        self._known = known
        # Message ids already counted: a retried event is not counted again.
        self._seen = seen

    def add(self, event: Event, now: datetime) -> None:
        """Counts a batch's event, if a leaf reads its type."""
        if event.message_id in self._seen or event.user_id is None:
            return
        if not any(leaf.matches_type(event.event_type) for leaf in self._leaves):
            return
        self._seen.add(event.message_id)
        # A person's events are never in the future (as the users service keeps them).
        moment = min(event.event_time, now)
        person = PersonEvent(event.event_type, moment, DECIMAL_JSON.decode(event.data_json))
        self._known.setdefault(event.user_id, []).append(person)

    def of(self, user_id: uuid.UUID) -> tuple[PersonEvent, ...]:
        return tuple(self._known.get(user_id, ()))


async def load(
    conn: asyncpg.Connection,
    users: Users,
    events: Iterable[Event],
    leaves: Sequence[EventLeaf],
    *,
    now: datetime,
    retention: timedelta,
) -> PersonEvents:
    """The events the leaves read of the batch's users, stored before it. Runs
    in the ingest's transaction, where the trigger set is read; the users call
    (which holds that transaction open for its round trip) is made only when a
    window reaches past the boundary."""
    reads = event_reads(leaves, now)
    user_ids = sorted({event.user_id for event in events if event.user_id is not None})
    boundary = now - retention + _ARRIVAL_MARGIN
    since = boundary if reads.since is None else max(reads.since, boundary)
    recent = await store.person_events(conn, user_ids, reads.types, since)
    known = {user: [event for _, event in found] for user, found in recent.items()}
    seen = {message_id for found in recent.values() for message_id, _ in found}
    if reads.since is None or reads.since < boundary:
        for user, older in (await _older(users, user_ids, reads, boundary)).items():
            known[user] = [*older, *known.get(user, ())]
    return PersonEvents(leaves, known, seen)


async def _older(
    users: Users, user_ids: Sequence[uuid.UUID], reads: EventReads, boundary: datetime
) -> dict[uuid.UUID, list[PersonEvent]]:
    """The users service's copy of the events before the boundary."""
    profiles = await users.profiles(user_ids, reads)
    return {
        user: [event for event in profile.profile.events if event.occurred_at < boundary]
        for user, profile in profiles.items()
    }
