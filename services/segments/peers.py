"""What the segments service asks other services directly: the users service,
which owns the users, runs conditions as SQL where they are (MatchUserIds,
CountUsers) and gives the Python evaluator its input (BatchGetUserProfiles).
Calls that must happen (events to metrics and triggers) go through the outbox
instead.

The use cases see the users service as `Users`, the little they ask of it;
`clients.users.UsersClient` is that over gRPC."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from clients.users import KnownUser, UserMatches
from conditions import EventReads
from runtime.structs import JsonObject


class Users(Protocol):
    """What the segments service asks of the users service."""

    def match(
        self,
        condition: JsonObject,
        stages: Sequence[str],
        as_of: datetime,
        *,
        limit: int = 0,
        next_entry: bool = False,
    ) -> AsyncIterator[UserMatches]:
        """The users the condition selects at `as_of`, in ascending id order, in
        batches; with `next_entry`, when the next user may enter by time alone."""
        ...

    async def count(self, condition: JsonObject, stages: Sequence[str], as_of: datetime) -> int:
        """How many users the condition selects at `as_of`."""
        ...

    async def profiles(
        self, user_ids: Iterable[uuid.UUID], events: EventReads = ...
    ) -> Mapping[uuid.UUID, KnownUser]:
        """Those of the users that exist, each with the tracked events `events` asks for."""
        ...
