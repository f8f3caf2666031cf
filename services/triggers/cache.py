"""The enabled triggers, compiled, kept in memory by each replica.

Every change of the `triggers` table bumps `trigger_catalog.version` (a
statement trigger, whatever statement made the change). Each ingest
transaction reads the version (in the statement it starts with) and the set
is reloaded when it moved: a change applies to the next batch on every
replica, with no message between replicas and no NOTIFY (which serialises
commits).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from runtime.errors import InvalidArgument
from services.triggers import store
from services.triggers.domain import TriggerSet, compile_trigger

log = logging.getLogger(__name__)


class TriggerCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._current = TriggerSet(-1, ())
        self._reloading = asyncio.Lock()

    async def at(self, version: int) -> TriggerSet:
        """The enabled triggers at catalog `version` (or a later one)."""
        if version > self._current.version:
            async with self._reloading:
                if version > self._current.version:
                    self._current = await self._load()
        return self._current

    async def _load(self) -> TriggerSet:
        version, triggers = await store.enabled_triggers(self._pool)
        compiled = []
        for trigger in triggers:
            try:
                compiled.append((trigger.event_type, compile_trigger(trigger)))
            except InvalidArgument as error:
                # Only a condition written around the API gets here: one bad trigger
                # must not stop the events of all the others.
                log.error("trigger %s is skipped, its condition is invalid: %s", trigger.id, error)
        return TriggerSet(version, compiled)
