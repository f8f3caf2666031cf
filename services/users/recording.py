"""RecordUserEvents: people's tracked events, kept for the conditions' event
leaves. Each batch recorded asks the segments service to re-evaluate its users
for those event types, through the outbox as an attribute change does
(docs/architecture.md, "Who keeps what people did")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from runtime.clock import Clock
from runtime.server import ServiceContext
from services.users import store_events
from services.users.events import RecordedEvent
from services.users.handlers import Reevaluations


class UserEvents:
    """The use case of RecordUserEvents."""

    def __init__(self, context: ServiceContext, clock: Clock, retention: timedelta) -> None:
        self._context = context
        self._clock = clock
        self._retention = retention

    async def record(self, events: Sequence[RecordedEvent]) -> int:
        """Stores the new events and, in the same transaction, asks the segments
        service to re-evaluate their users for those types; how many were new."""
        now = self._clock.now()
        async with self._context.unit_of_work() as uow:
            stored = await store_events.record_events(uow.conn, events, now, now - self._retention)
            types: dict[uuid.UUID, set[str]] = {}
            for user_id, event_type in stored:
                types.setdefault(user_id, set()).add(event_type)
            reevaluations = Reevaluations()
            for user_id, kinds in sorted(types.items()):
                reevaluations.add(user_id, event_types=sorted(kinds))
            reevaluations.publish(uow)
        return len(stored)
