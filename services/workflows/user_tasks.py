"""User tasks: the human steps of a workflow (docs/workflows.md, "User tasks").
A token that reaches a user task waits, as a job's does, while its record is
listed, claimed, assigned; CompleteUserTask completes the record and moves the
token on in the same transaction, its variables merged as a job's are."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from runtime.database import UnitOfWork
from runtime.errors import FailedPrecondition
from services.workflows.state import JobCompleted
from services.workflows.step_rows import Notes
from services.workflows.stepper import Stepper
from services.workflows.store import executions as execution_store
from services.workflows.store import user_tasks as store
from services.workflows.user_task_rules import (
    UserTaskQuery,
    UserTaskRecord,
    user_task_not_found,
)


def _ended(task: UserTaskRecord) -> FailedPrecondition:
    return FailedPrecondition(f"user task {task.id} is {task.state}", reason="USER_TASK_ENDED")


class UserTasks:
    def __init__(self, stepper: Stepper) -> None:
        self._stepper = stepper

    async def get(self, task_id: uuid.UUID) -> UserTaskRecord:
        found = await store.get_user_task(self._stepper.context.pool, task_id)
        if found is None:
            raise user_task_not_found(task_id)
        return found

    async def page(
        self, query: UserTaskQuery, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[UserTaskRecord]:
        return await store.list_user_tasks(
            self._stepper.context.pool, query, cursor=cursor, limit=limit
        )

    async def _open(self, uow: UnitOfWork, task_id: uuid.UUID) -> UserTaskRecord:
        task = await store.get_user_task(uow.conn, task_id, lock=True)
        if task is None:
            raise user_task_not_found(task_id)
        if not task.open:
            raise _ended(task)
        return task

    async def claim(self, task_id: uuid.UUID, assignee: str) -> UserTaskRecord:
        """Takes the task for `assignee`: refused if someone else has it; again
        for the same assignee, nothing changes."""

        async def work(uow: UnitOfWork, notes: Notes) -> UserTaskRecord:
            task = await self._open(uow, task_id)
            if task.assignee == assignee:
                return task
            if task.assignee is not None:
                raise FailedPrecondition(
                    f"user task {task_id} is claimed by {task.assignee!r}",
                    reason="USER_TASK_CLAIMED",
                )
            return await self._assign(uow, task_id, assignee)

        return await self._stepper.transaction(work)

    async def assign(self, task_id: uuid.UUID, assignee: str | None) -> UserTaskRecord:
        """Gives the task to `assignee` whoever has it (None: to nobody, an unclaim)."""

        async def work(uow: UnitOfWork, notes: Notes) -> UserTaskRecord:
            await self._open(uow, task_id)
            return await self._assign(uow, task_id, assignee)

        return await self._stepper.transaction(work)

    @staticmethod
    async def _assign(uow: UnitOfWork, task_id: uuid.UUID, assignee: str | None) -> UserTaskRecord:
        changed = await store.set_assignee(uow.conn, task_id, assignee)
        assert changed is not None  # locked open by _open
        return changed

    async def complete(self, task_id: uuid.UUID, variables: dict[str, Any]) -> UserTaskRecord:
        """Completes the task and moves its token on, in one transaction."""
        stepper = self._stepper

        async def work(uow: UnitOfWork, notes: Notes) -> UserTaskRecord:
            found = await store.get_user_task(uow.conn, task_id)
            if found is None:
                raise user_task_not_found(task_id)
            # The execution first, as every step locks it, then the task.
            states = await execution_store.lock_executions(uow.conn, [found.execution_id])
            task = await self._open(uow, task_id)
            state = states.get(task.execution_id)
            if state is None or task.token not in state.tokens:
                raise _ended(task)
            completed = await store.complete_user_task(uow.conn, task_id, stepper.clock.now())
            trigger = JobCompleted(task.token, variables)
            await stepper.advance_request(uow, notes, {state.id: [trigger]})
            return completed

        return await stepper.transaction(work)
