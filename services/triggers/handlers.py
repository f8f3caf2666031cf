"""The triggers service's use cases besides ingestion (ingest.py): the trigger
catalog, the trigger executions, and a user's erase. Each runs in one unit of
work; a change of `triggers` reaches every replica's cache through the
catalog version (cache.py)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from runtime import idempotency
from runtime.errors import NotFound
from runtime.idempotency import RequestKey
from runtime.server import ServiceContext
from services.triggers import store
from services.triggers.domain import Trigger, TriggerFields
from services.triggers.peers import Workflows
from services.triggers.store import TriggerExecution, TriggerFilter


def _not_found(trigger_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"trigger {trigger_id} does not exist",
        reason="TRIGGER_NOT_FOUND",
        metadata={"trigger_id": str(trigger_id)},
    )


class TriggerCatalog:
    def __init__(self, context: ServiceContext, workflows: Workflows) -> None:
        self._context = context
        self._workflows = workflows

    async def create(self, fields: TriggerFields, key: RequestKey | None) -> Trigger:
        assert fields.workflow_id is not None
        await self._workflows.check_startable(fields.workflow_id, "trigger.workflow_id")
        async with self._context.unit_of_work() as uow:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)) is not None:
                trigger_id = uuid.UUID(json.loads(stored)["trigger_id"])
                replayed = await store.get_trigger(uow.conn, trigger_id)
                if replayed is None:
                    raise NotFound(
                        f"the trigger this request created ({trigger_id}) was deleted since",
                        reason="TRIGGER_DELETED",
                    )
                return replayed
            trigger = await store.insert_trigger(uow.conn, fields)
            if key is not None:
                reply = json.dumps({"trigger_id": str(trigger.id)}).encode()
                await idempotency.store(uow.conn, key, reply)
            return trigger

    async def get(self, trigger_id: uuid.UUID) -> Trigger:
        trigger = await store.get_trigger(self._context.pool, trigger_id)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def page(
        self, where: TriggerFilter, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Trigger]:
        return await store.list_triggers(self._context.pool, where, cursor, limit)

    async def update(self, trigger_id: uuid.UUID, fields: TriggerFields) -> Trigger:
        if fields.workflow_id is not None:
            await self._workflows.check_startable(fields.workflow_id, "trigger.workflow_id")
        async with self._context.unit_of_work() as uow:
            trigger = await store.update_trigger(uow.conn, trigger_id, fields)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def set_enabled(self, trigger_id: uuid.UUID, enabled: bool) -> Trigger:
        async with self._context.unit_of_work() as uow:
            trigger = await store.set_enabled(uow.conn, trigger_id, enabled)
        if trigger is None:
            raise _not_found(trigger_id)
        return trigger

    async def delete(self, trigger_id: uuid.UUID) -> None:
        async with self._context.unit_of_work() as uow:
            if not await store.delete_trigger(uow.conn, trigger_id):
                raise _not_found(trigger_id)


class TriggerHistory:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def page(
        self,
        trigger_id: uuid.UUID | None,
        user_id: uuid.UUID | None,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[TriggerExecution]:
        return await store.list_executions(self._context.pool, trigger_id, user_id, cursor, limit)

    async def erase_user(self, user_id: uuid.UUID) -> int:
        """A user's erase (docs/schema.md, "Erasing a user"): their trigger
        executions, events and waiting starts go; later events are refused."""
        async with self._context.unit_of_work() as uow:
            return await store.erase_user(uow.conn, user_id)
