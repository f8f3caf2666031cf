"""Workflow definitions: create, read, change, status moves, delete.

A workflow's BPMN is parsed and validated once, when it is saved, and stored
with its graph (JSON) as a version; executions run on the version they started
on, so a BPMN that changes once the workflow left draft is a new version.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from runtime import idempotency
from runtime.database import UnitOfWork
from runtime.errors import FailedPrecondition, NotFound
from runtime.idempotency import RequestKey
from runtime.identity import current_caller
from services.workflows.bpmn import BpmnError, parse
from services.workflows.campaigns import Campaigns
from services.workflows.domain import (
    ARCHIVED,
    DRAFT,
    VersionRow,
    WorkflowFields,
    WorkflowRecord,
    can_move,
    next_version,
    workflow_not_found,
)
from services.workflows.state import Cancel, Trigger
from services.workflows.step_rows import Notes
from services.workflows.stepper import Stepper
from services.workflows.store import definitions as store
from services.workflows.store.campaigns import CycleRow
from services.workflows.store.executions import running_executions
from services.workflows.store.statistics import ElementCounts, element_counts

# BpmnError: what version_row raises for a document it refuses.
__all__ = ["BpmnError", "WorkflowDirectory"]


class WorkflowDirectory:
    """The workflow definitions, in their versions."""

    def __init__(self, stepper: Stepper, max_bpmn_bytes: int, campaigns: Campaigns) -> None:
        self._stepper = stepper
        self._max_bpmn_bytes = max_bpmn_bytes
        self._campaigns = campaigns

    def version_row(self, bpmn_xml: str) -> VersionRow:
        """Parses and validates the BPMN; raises BpmnError."""
        definition = parse(bpmn_xml, self._max_bpmn_bytes)
        return VersionRow(
            bpmn_xml,
            definition.to_json(),
            hashlib.sha256(bpmn_xml.encode()).digest(),
            definition.start_message,
        )

    async def create(
        self, fields: WorkflowFields, version: VersionRow, key: RequestKey | None
    ) -> WorkflowRecord:
        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)):
                return await self._existing(uow.conn, json.loads(stored)["workflow_id"])
            workflow = await store.insert_workflow(
                uow.conn,
                fields.name,
                fields.description,
                fields.stages,
                created_by=fields.created_by,
                version=version,
            )
            if key is not None:
                await idempotency.store(
                    uow.conn, key, json.dumps({"workflow_id": str(workflow.id)}).encode()
                )
            return workflow

        return await self._stepper.transaction(work)

    async def _existing(self, conn: asyncpg.Connection, workflow_id: str) -> WorkflowRecord:
        workflow = await store.get_workflow(conn, uuid.UUID(workflow_id))
        if workflow is None:
            raise NotFound("the workflow this request created was deleted since")
        return workflow

    async def get(self, workflow_id: uuid.UUID, version: str) -> WorkflowRecord:
        """The workflow as it is, or as it was at `version` (its BPMN and number)."""
        pool = self._stepper.context.pool
        if version:
            found = await store.get_workflow_version(pool, workflow_id, version)
            if found is None:
                raise NotFound(
                    f"workflow {workflow_id} has no version {version}",
                    reason="VERSION_NOT_FOUND",
                    metadata={"workflow_id": str(workflow_id), "version": version},
                )
            return found
        return _found(await store.get_workflow(pool, workflow_id), workflow_id)

    async def statistics(
        self, workflow_id: uuid.UUID, version: str
    ) -> tuple[str, list[ElementCounts]]:
        """The version counted (the current one when `version` is empty) and its
        per-element counts."""
        counted = (await self.get(workflow_id, version)).version
        return counted, await element_counts(self._stepper.context.pool, workflow_id, counted)

    async def campaign_cycles(self, workflow_id: uuid.UUID, limit: int) -> list[CycleRow]:
        """A recurring campaign's scheduled cycle, then its latest."""
        return await self._campaigns.recent(workflow_id, limit)

    async def versions(
        self, workflow_id: uuid.UUID, cursor: tuple[datetime, str] | None, limit: int
    ) -> list[store.VersionListed]:
        """A page of the workflow's versions; NOT_FOUND for a workflow that does
        not exist (every workflow has a version, so only its first page is empty)."""
        found = await store.list_versions(self._stepper.context.pool, workflow_id, cursor, limit)
        if not found and cursor is None:
            raise workflow_not_found(workflow_id)
        return found

    async def page(
        self,
        statuses: list[str],
        stages: list[str],
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[WorkflowRecord]:
        return await store.list_workflows(
            self._stepper.context.pool, statuses, stages, cursor, limit
        )

    async def update(
        self,
        workflow_id: uuid.UUID,
        fields: dict[str, Any],
        version: VersionRow | None,
    ) -> WorkflowRecord:
        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            current = _found(
                await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id
            )
            if current.status == ARCHIVED:
                raise FailedPrecondition(
                    "an archived workflow cannot change", reason="WORKFLOW_ARCHIVED"
                )
            number = current.version
            bpmn = current.bpmn_xml
            if version is not None:
                checksum = await store.version_checksum(uow.conn, workflow_id, current.version)
                if checksum != version.checksum:
                    # Executions may run on any version that was ever active.
                    if current.status != DRAFT:
                        number = next_version(current.version)
                    await store.save_version(uow.conn, workflow_id, number, version)
                    bpmn = version.bpmn_xml
            updated = await store.update_workflow(
                uow.conn,
                workflow_id,
                name=fields.get("name", current.name),
                description=fields.get("description", current.description),
                stages=fields.get("stages", current.stages),
                bpmn_xml=bpmn,
                version=number,
            )
            if number != current.version:  # a new version supersedes the campaign's
                await self._campaigns.follow(uow.conn, updated, current_caller().actors)
            return updated

        return await self._stepper.transaction(work)

    async def move(self, workflow_id: uuid.UUID, target: str) -> WorkflowRecord:
        """Activates, deactivates or archives (domain.STATUS_MOVES)."""

        async def work(uow: UnitOfWork, notes: Notes) -> WorkflowRecord:
            current = _found(
                await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id
            )
            if current.status == target:
                return current
            if not can_move(current.status, target):
                raise FailedPrecondition(
                    f"a workflow cannot go from {current.status} to {target}",
                    reason="ILLEGAL_STATUS_CHANGE",
                    metadata={"from": current.status, "to": target},
                )
            moved = await store.set_status(uow.conn, workflow_id, target)
            await self._campaigns.follow(uow.conn, moved, current_caller().actors)
            return moved

        return await self._stepper.transaction(work)

    async def delete(self, workflow_id: uuid.UUID, force: bool) -> int:
        """Deletes the workflow and its executions; running ones only with
        `force`, cancelled first. Returns how many were cancelled."""

        async def work(uow: UnitOfWork, notes: Notes) -> int:
            _found(await store.get_workflow(uow.conn, workflow_id, lock=True), workflow_id)
            running = await running_executions(uow.conn, workflow_id)
            if running and not force:
                raise FailedPrecondition(
                    f"{len(running)} executions of the workflow are running; set force",
                    reason="EXECUTIONS_RUNNING",
                    metadata={"running": str(len(running))},
                )
            if running:
                cancel: list[Trigger] = [Cancel("the workflow was deleted")]
                await self._stepper.advance(uow, notes, {i: list(cancel) for i in running})
            await store.delete_workflow(uow.conn, workflow_id)
            return len(running)

        return await self._stepper.transaction(work)


def _found(workflow: WorkflowRecord | None, workflow_id: uuid.UUID) -> WorkflowRecord:
    if workflow is None:
        raise workflow_not_found(workflow_id)
    return workflow
