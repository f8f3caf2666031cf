"""The users service's use cases: each runs in one unit of work, applies the
rules of domain.py through the SQL of store.py, and publishes the lifecycle
events and erase requests its change implies through the outbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from conditions import compile_sql
from lifecycle.segments.v1 import segments_pb2
from runtime import idempotency
from runtime.database import UnitOfWork, connection
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from runtime.idempotency import RequestKey
from runtime.identity import current_caller
from runtime.isolation import refusal_text, write_apart
from runtime.lifecycle_events import EventBatch, erase_messages
from runtime.server import ServiceContext
from runtime.structs import dict_to_struct
from services.users import store, store_events
from services.users.domain import (
    DEFAULT_STAGE,
    MAX_ATTRIBUTES_BYTES,
    ConditionQuery,
    ImportRow,
    MatchBatch,
    Profile,
    StageChange,
    Transition,
    User,
    UserChange,
    UserFilter,
    attribute_changes,
    moved_by,
)
from services.users.events import EventReads
from services.users.store import MatchQuery, MergedUser

PRODUCER = "users"
# Changes of a user that triggers can fire on (`changed_to` and the like).
TRIGGER_EVENTS = frozenset({"user.stage_changed", "user.attributes_changed"})
# Memberships follow users: every change of a user's attributes or stage (and
# every new user) asks the segments service to re-evaluate them, reliably.
REEVALUATE_USERS = "segments.reevaluate_users"


def _not_found(user_id: uuid.UUID | str) -> NotFound:
    return NotFound(
        f"user {user_id} does not exist",
        reason="USER_NOT_FOUND",
        metadata={"user_id": str(user_id)},
    )


_SOURCES = {source: dict_to_struct({"source": source}) for source in ("api", "import")}


def _add_created(
    events: EventBatch, user_id: uuid.UUID, stage: str, at: datetime, source: str
) -> None:
    events.add("user.created", at, user_id=user_id, stage=stage, data=_SOURCES[source])


def _add_stage_changed(events: EventBatch, transition: Transition) -> None:
    events.add(
        "user.stage_changed",
        transition.transitioned_at,
        user_id=transition.user_id,
        stage=transition.to_stage,
        workflow_execution_id=transition.workflow_execution_id,
        data={
            "from_stage": transition.from_stage,
            "to_stage": transition.to_stage,
            "transition_id": transition.id,
            "metadata": transition.metadata,
        },
    )


def _add_attributes_changed(
    events: EventBatch, user_id: uuid.UUID, stage: str, at: datetime, changes: dict[str, Any]
) -> None:
    events.add(
        "user.attributes_changed", at, user_id=user_id, stage=stage, data={"changes": changes}
    )


class Reevaluations:
    """The users whose segments must be re-evaluated after a change, as the
    outbox payloads (ReevaluateUsersRequest, at most `per_request` users each)."""

    def __init__(self, per_request: int = 1000) -> None:
        self._per_request = per_request
        self._changes: list[segments_pb2.UserChange] = []

    def add(
        self,
        user_id: uuid.UUID,
        *,
        attribute_keys: Sequence[str] = (),
        stage_changed: bool = False,
        created: bool = False,
        event_types: Sequence[str] = (),
    ) -> None:
        self._changes.append(
            segments_pb2.UserChange(
                user_id=str(user_id),
                attribute_keys=sorted(attribute_keys),
                stage_changed=stage_changed,
                created=created,
                event_types=event_types,
            )
        )

    def publish(self, uow: UnitOfWork) -> None:
        for start in range(0, len(self._changes), self._per_request):
            request = segments_pb2.ReevaluateUsersRequest(
                changes=self._changes[start : start + self._per_request]
            )
            uow.publish(REEVALUATE_USERS, request.SerializeToString(), items=len(request.changes))


def _reevaluate(uow: UnitOfWork, user_id: uuid.UUID, **change: Any) -> None:
    reevaluations = Reevaluations()
    reevaluations.add(user_id, **change)
    reevaluations.publish(uow)


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    # Rows that could not be written: index, the field at fault, why.
    failed: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, other: ImportSummary) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.failed += other.failed


class UserDirectory:
    """The use cases of the users service."""

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create_user(
        self, email: str, stage: str, attributes_json: str, key: RequestKey | None
    ) -> User:
        async with self._context.unit_of_work() as uow:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)) is not None:
                return await self._replayed_user(uow.conn, json.loads(stored)["user_id"])
            user = await store.insert_user(uow.conn, email, stage, attributes_json)
            if user is None:
                raise AlreadyExists(
                    "a user with this email already exists",
                    reason="EMAIL_TAKEN",
                    metadata={"email": email},
                )
            await store.insert_first_transition(
                uow.conn, user, moved_by({"source": "api"}, current_caller().actors)
            )
            events = EventBatch(PRODUCER, forwarded=TRIGGER_EVENTS)
            _add_created(events, user.id, stage, user.created_at, "api")
            events.publish(uow)
            _reevaluate(uow, user.id, created=True)
            if key is not None:
                await idempotency.store(
                    uow.conn, key, json.dumps({"user_id": str(user.id)}).encode()
                )
            return user

    async def _replayed_user(self, conn: asyncpg.Connection, user_id: str) -> User:
        user = await store.get_user(conn, uuid.UUID(user_id))
        if user is None:
            raise NotFound(
                f"the user this request created ({user_id}) was erased since", reason="USER_ERASED"
            )
        return user

    async def get_user(self, user_id: uuid.UUID) -> User:
        user = await store.get_user(self._context.pool, user_id)
        if user is None:
            raise _not_found(user_id)
        return user

    async def get_user_by_email(self, email: str) -> User:
        user = await store.get_user_by_email(self._context.pool, email)
        if user is None:
            raise NotFound(
                "no user has this email", reason="USER_NOT_FOUND", metadata={"email": email}
            )
        return user

    async def list_users(
        self, where: UserFilter, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[User]:
        return await store.list_users(self._context.pool, where, cursor, limit)

    async def update_user(self, user_id: uuid.UUID, change: UserChange, etag: str) -> User:
        async with self._context.unit_of_work() as uow:
            current = await store.get_user(uow.conn, user_id, lock=True)
            if current is None:
                raise _not_found(user_id)
            if etag and etag != current.etag:
                raise Aborted("the user changed since the etag was read", reason="ETAG_MISMATCH")
            try:
                updated = await store.update_user(uow.conn, user_id, change)
            except asyncpg.CheckViolationError as error:
                raise InvalidArgument.field(
                    "user.attributes", f"the merged attributes exceed {MAX_ATTRIBUTES_BYTES} bytes"
                ) from error
            if updated is None:
                raise AlreadyExists(
                    "another user has this email",
                    reason="EMAIL_TAKEN",
                    metadata={"email": change.email or ""},
                )
            changes = attribute_changes(current.attributes, updated.attributes)
            if changes:
                events = EventBatch(PRODUCER, forwarded=TRIGGER_EVENTS)
                _add_attributes_changed(
                    events, updated.id, updated.stage, updated.updated_at, changes
                )
                events.publish(uow)
                _reevaluate(uow, updated.id, attribute_keys=list(changes))
            return updated

    async def erase_user(self, user_id: uuid.UUID, etag: str, allow_missing: bool) -> None:
        """GDPR erase: the user and their history go now, every other service's data
        through the outbox (docs/schema.md, "Erasing a user"); the erase is
        recorded (which user, when, who asked)."""
        async with self._context.unit_of_work() as uow:
            current = await store.get_user(uow.conn, user_id, lock=True)
            if current is None:
                if allow_missing:
                    return
                raise _not_found(user_id)
            if etag and etag != current.etag:
                raise Aborted("the user changed since the etag was read", reason="ETAG_MISMATCH")
            await store.delete_user(uow.conn, user_id, current_caller().actors)
            for topic, payload in erase_messages(user_id):
                uow.publish(topic, payload)
            events = EventBatch(PRODUCER, forwarded=TRIGGER_EVENTS)
            # Anonymous on purpose: it survives the erase of the user's events.
            events.add("user.erased", current.updated_at, stage=current.stage)
            events.publish(uow)

    async def transition_stage(
        self, user_id: uuid.UUID, change: StageChange, key: RequestKey | None
    ) -> tuple[User, Transition]:
        async with self._context.unit_of_work() as uow:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)) is not None:
                return await self._replayed_transition(
                    uow.conn, json.loads(stored)["transition_id"]
                )
            recorded = replace(change, metadata=moved_by(change.metadata, current_caller().actors))
            outcome = await store.transition(uow.conn, user_id, recorded)
            if outcome is None:
                raise _not_found(user_id)
            if outcome.user is None or outcome.transition is None:
                raise FailedPrecondition(
                    f"the user is already in stage {outcome.previous_stage}",
                    reason="SAME_STAGE",
                    metadata={"stage": outcome.previous_stage},
                )
            events = EventBatch(PRODUCER, forwarded=TRIGGER_EVENTS)
            _add_stage_changed(events, outcome.transition)
            events.publish(uow)
            _reevaluate(uow, user_id, stage_changed=True)
            if key is not None:
                reference = {"transition_id": outcome.transition.id}
                await idempotency.store(uow.conn, key, json.dumps(reference).encode())
            return outcome.user, outcome.transition

    async def _replayed_transition(
        self, conn: asyncpg.Connection, transition_id: int
    ) -> tuple[User, Transition]:
        transition = await store.get_transition(conn, transition_id)
        user = await store.get_user(conn, transition.user_id) if transition else None
        if transition is None or user is None:
            raise NotFound("the user this transition moved was erased since", reason="USER_ERASED")
        return user, transition

    async def history(
        self, user_id: uuid.UUID, cursor: tuple[datetime, int] | None, limit: int
    ) -> list[Transition]:
        pool = self._context.pool
        transitions = await store.list_transitions(pool, user_id, cursor, limit)
        if not transitions and cursor is None and not await store.user_exists(pool, user_id):
            raise _not_found(user_id)
        return transitions

    async def import_users(self, rows: Sequence[ImportRow]) -> ImportSummary:
        """Upserts valid rows by email, set-based; a row the database refuses fails
        alone (runtime.isolation) and the others are written."""
        summary = ImportSummary()
        for part in await write_apart(rows, self._import_part):
            if part.result is not None:
                summary.add(part.result)
            else:
                assert part.error is not None
                summary.failed += [
                    (row.index, "row", refusal_text(part.error)) for row in part.items
                ]
        return summary

    async def _import_part(self, rows: Sequence[ImportRow]) -> ImportSummary:
        """Upserts rows in one transaction."""
        summary = ImportSummary()
        metadata = moved_by({"source": "import"}, current_caller().actors)
        async with self._context.unit_of_work() as uow:
            merged = await store.import_existing(uow.conn, rows, metadata)
            done = {user.index for user in merged}
            fresh = [row for row in rows if row.index not in done]
            created = await store.import_new(uow.conn, fresh, DEFAULT_STAGE, metadata)
            done |= {user.index for user in created}
            # Rows whose email another writer inserted between the two statements.
            raced = [row for row in fresh if row.index not in done]
            if raced:
                late = await store.import_existing(uow.conn, raced, metadata)
                merged += late
                done |= {user.index for user in late}
            summary.failed += [
                (row.index, "email", "the email was written concurrently; retry the row")
                for row in raced
                if row.index not in done
            ]
            events = EventBatch(PRODUCER, forwarded=TRIGGER_EVENTS)
            reevaluations = Reevaluations()
            for user in created:
                _add_created(events, user.user_id, user.stage, user.created_at, "import")
                reevaluations.add(user.user_id, created=True)
            summary.created = len(created)
            self._add_merge_events(events, reevaluations, merged, summary)
            events.publish(uow)
            reevaluations.publish(uow)
        return summary

    @staticmethod
    def _add_merge_events(
        events: EventBatch,
        reevaluations: Reevaluations,
        merged: list[MergedUser],
        summary: ImportSummary,
    ) -> None:
        for user in merged:
            if user.updated_at is None:
                summary.unchanged += 1
                continue
            summary.updated += 1
            if user.transition is not None:
                _add_stage_changed(events, user.transition)
            changes = attribute_changes(user.old_attributes, user.attributes)
            if changes:
                _add_attributes_changed(events, user.user_id, user.stage, user.updated_at, changes)
            reevaluations.add(
                user.user_id, attribute_keys=list(changes), stage_changed=bool(user.transition)
            )


class UserMatcher:
    """Conditions of the shared language, run as SQL over the users (for the
    segments service, which may not read this schema)."""

    # Rows per MatchUserIds message: large enough to amortise a message, small
    # enough to keep a stream's memory flat.
    BATCH_SIZE = 5000

    def __init__(self, context: ServiceContext, timeout_seconds: float) -> None:
        self._context = context
        self._timeout_ms = int(timeout_seconds * 1000)

    def _too_slow(self, error: Exception) -> ResourceExhausted:
        return ResourceExhausted(
            f"the condition ran longer than {self._timeout_ms / 1000:g} s",
            reason="CONDITION_TIMEOUT",
        )

    @staticmethod
    def _compiled(query: ConditionQuery) -> MatchQuery:
        """The query as SQL; INVALID_ARGUMENT names the part of the condition
        that cannot run in SQL."""
        return MatchQuery(
            compile_sql(query.condition, query.as_of),
            query.stages,
            query.user_ids,
            query.limit,
            query.next_entry,
        )

    async def match(self, query: ConditionQuery) -> AsyncIterator[MatchBatch]:
        compiled = self._compiled(query)
        async with connection(self._context.pool) as conn:
            try:
                async for batch in store.match_users(
                    conn, compiled, self._timeout_ms, self.BATCH_SIZE
                ):
                    yield batch
            except asyncpg.QueryCanceledError as error:
                raise self._too_slow(error) from error

    async def count(self, query: ConditionQuery) -> int:
        compiled = self._compiled(query)
        async with connection(self._context.pool) as conn:
            try:
                return await store.count_users(conn, compiled, self._timeout_ms)
            except asyncpg.QueryCanceledError as error:
                raise self._too_slow(error) from error

    async def profiles(self, user_ids: Sequence[uuid.UUID], reads: EventReads) -> list[Profile]:
        """The profiles, each with the events `reads` asks for. Two statements, no
        snapshot: an event recorded between them is followed by its own
        re-evaluation (ReevaluateUsers from RecordUserEvents) anyway."""
        if reads.empty:
            return await store.get_profiles(self._context.pool, user_ids)
        async with connection(self._context.pool) as conn:
            return await store_events.profiles_with_events(conn, user_ids, reads)
