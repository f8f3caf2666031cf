"""The segments service's use cases. Definitions live here; the users they
select live in the users service, which runs conditions as SQL (MatchUserIds)
or hands profiles to the Python evaluator (BatchGetUserProfiles).

Memberships are a cache with three writers, serialised per segment by
advisory locks (store.lock_for_refresh / lock_for_writes), each of which reads
the users only once it holds the lock, so that the freshest reading is the
one written last:
- a full refresh (RefreshSegment, the scheduler): SQL over every user;
- re-evaluations of changed users (ReevaluateUsers, from the users service's
  outbox) and of expired memberships (the scheduler): Python per user;
- CheckMembership on a cache miss.
Every change of membership is a segment.entered / segment.exited event in the
same transaction (metrics and triggers, through the outbox), and changes the
segment's size of the day (segment_sizes) in that transaction too.

A definition change (UpdateSegment, DeleteSegment) holds its segment's
definition lock (store.lock_definitions) alone and writes its moment before it
commits. The re-evaluations and CheckMembership share the definition locks of
the segments they evaluate, and of those these reference, before they read
the definitions, so that none writes an answer of an old definition after a
change's moment; a full refresh, which holds its write lock for long, instead
finds the change when it finishes (store.finish_refresh).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from conditions import Condition, Context, EventReads, LeafOutcome, UserProfile, event_reads
from runtime import idempotency, tombstones
from runtime.clock import Clock
from runtime.database import Executor, UnitOfWork, connection, transaction
from runtime.errors import FailedPrecondition
from runtime.idempotency import RequestKey
from runtime.lifecycle_events import EventBatch
from runtime.pacing import Pacer
from runtime.server import ServiceContext
from runtime.structs import dict_to_struct, from_unix_micros, unix_micros
from services.segments import store
from services.segments.compiled import CompiledSegments
from services.segments.domain import (
    ENTERED,
    EXITED,
    MEMBERSHIP_EVENTS,
    PRODUCER,
    CompiledSegment,
    MatchRange,
    Membership,
    RangeChanges,
    Segment,
    SegmentFields,
    SegmentSize,
    UserChange,
    Verdict,
    compare_range,
    merge_changes,
    resolved,
    segment_not_found,
    size_changes,
    user_not_found,
    utc_day,
)
from services.segments.peers import Users
from services.segments.settings import SegmentSettings

# Cached members a refresh reads beyond a batch of matches at a time: about the
# most it deletes per transaction (its matches come in batches of the users
# service's size).
EXIT_BATCH = 5000
# Users per transaction when changed or expired users are re-evaluated.
REEVALUATE_BATCH = 1000


async def judge(
    wanted: Mapping[uuid.UUID, Sequence[CompiledSegment]],
    profiles: Mapping[uuid.UUID, UserProfile],
    as_of: datetime,
    ttl: timedelta,
) -> dict[tuple[uuid.UUID, uuid.UUID], Verdict]:
    """Each user with a profile against their segments. A batch of users against
    many segments takes a second: it lets the event loop in as it goes."""
    verdicts, pacer = {}, Pacer()
    for user_id, segments in wanted.items():
        profile = profiles.get(user_id)
        if profile is None:
            continue
        for segment in segments:
            verdicts[(user_id, segment.segment.id)] = segment.verdict(profile, as_of, ttl)
        await pacer.done(len(segments))
    return verdicts


async def _count(conn: asyncpg.Connection, changes: Mapping[uuid.UUID, int], at: datetime) -> None:
    """Records the segments' changes of members in their sizes of the day."""
    changed = {segment_id: change for segment_id, change in changes.items() if change}
    if changed:
        await store.add_to_sizes(conn, changed, at)


async def _lock_for_change(conn: asyncpg.Connection, segment_id: uuid.UUID) -> None:
    """Locks a segment that is about to change or go: its definition lock, which
    the answers that will be cached share while they read it and write their
    memberships, then its row. In that order: a writer holding the shared lock
    checks the row (the foreign keys of memberships and sizes), which must not
    be locked by a change waiting for that writer."""
    await store.lock_definitions(conn, [segment_id], exclusive=True)
    if not await store.lock_segments(conn, [segment_id], exclusive=True):
        raise segment_not_found(segment_id)


@dataclass(frozen=True)
class Preview:
    size: int
    sample: list[uuid.UUID]


class SegmentDirectory:
    """Segment definitions: create, read, change, delete, preview."""

    def __init__(
        self, context: ServiceContext, compiled: CompiledSegments, users: Users, clock: Clock
    ) -> None:
        self._context = context
        self._compiled = compiled
        self._users = users
        self._clock = clock

    async def _check_references(
        self, conn: asyncpg.Connection, condition: Condition, owner: uuid.UUID | None
    ) -> None:
        """Locks the referenced segments (so they are not deleted meanwhile) and
        checks that the references resolve."""
        references = condition.segment_ids()
        if not references:
            return
        await store.lock_segments(conn, references)
        await self._compiled.load(conn)
        resolved(condition, self._compiled.definitions(), owner, "segment.conditions")

    async def create(self, fields: SegmentFields, key: RequestKey | None) -> Segment:
        assert fields.condition is not None
        async with self._context.unit_of_work() as uow:
            if key is not None and (stored := await idempotency.claim(uow.conn, key)) is not None:
                segment_id = uuid.UUID(json.loads(stored)["segment_id"])
                return await self._get(uow.conn, segment_id)
            await self._check_references(uow.conn, fields.condition, None)
            segment = await store.insert_segment(uow.conn, fields, self._clock.now())
            if key is not None:
                reference = json.dumps({"segment_id": str(segment.id)}).encode()
                await idempotency.store(uow.conn, key, reference)
            return segment

    async def _get(self, conn: Executor, segment_id: uuid.UUID) -> Segment:
        segment = await store.get_segment(conn, segment_id)
        if segment is None:
            raise segment_not_found(segment_id)
        return segment

    async def get(self, segment_id: uuid.UUID) -> Segment:
        return await self._get(self._context.pool, segment_id)

    async def list_page(
        self, stages: Sequence[str], cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Segment]:
        return await store.list_segments(self._context.pool, stages, cursor, limit)

    async def update(self, segment_id: uuid.UUID, fields: SegmentFields) -> Segment:
        async with self._context.unit_of_work() as uow:
            await _lock_for_change(uow.conn, segment_id)
            if fields.condition is not None:
                await self._check_references(uow.conn, fields.condition, segment_id)
            segment = await store.update_segment(uow.conn, segment_id, fields)
            if segment is None:
                raise segment_not_found(segment_id)
            if fields.definition_changed:
                changed = await self._with_dependents(uow.conn, segment_id)
                await store.mark_changed(uow.conn, changed, self._clock.now())
            return segment

    async def _with_dependents(
        self, conn: asyncpg.Connection, segment_id: uuid.UUID
    ) -> list[uuid.UUID]:
        """The segment and every segment that references it, directly or not."""
        found = [segment_id]
        pending = [segment_id]
        while pending:
            for referrer in await store.referencing(conn, pending.pop()):
                if referrer not in found:
                    found.append(referrer)
                    pending.append(referrer)
        return found

    async def delete(self, segment_id: uuid.UUID) -> None:
        async with self._context.unit_of_work() as uow:
            await _lock_for_change(uow.conn, segment_id)
            users_of = await store.referencing(uow.conn, segment_id)
            if users_of:
                raise FailedPrecondition(
                    f"segments {', '.join(map(str, users_of))} reference this segment",
                    reason="SEGMENT_REFERENCED",
                    metadata={"referenced_by": ",".join(map(str, users_of))},
                )
            await store.delete_segment(uow.conn, segment_id)

    async def preview(
        self, condition: Condition, stages: Sequence[str], sample_size: int
    ) -> Preview:
        async with connection(self._context.pool) as conn:
            await self._compiled.load(conn)
        full = resolved(condition, self._compiled.definitions(), None, "conditions")
        as_of = self._clock.now()
        expanded = full.expanded_json()
        total = await self._users.count(expanded, stages, as_of)
        sample = [
            uuid.UUID(user_id)
            async for batch in self._users.match(expanded, stages, as_of, limit=sample_size)
            for user_id in batch.user_ids
        ]
        return Preview(total, sample)


@dataclass
class _Changes:
    """How many users a refresh has made enter and exit so far."""

    entered: int = 0
    exited: int = 0


@dataclass(frozen=True)
class RefreshOutcome:
    entered: int
    exited: int
    members: int
    evaluated_at: datetime


@dataclass(frozen=True)
class CheckOutcome:
    member: bool
    evaluated_at: datetime
    valid_until: datetime | None
    cached: bool


@dataclass(frozen=True)
class Explanation:
    member: bool
    stage_matched: bool
    leaves: list[LeafOutcome]
    valid_until: datetime


class Memberships:
    """The membership cache: refresh, re-evaluation, checks, reads and erase."""

    def __init__(
        self,
        context: ServiceContext,
        compiled: CompiledSegments,
        users: Users,
        clock: Clock,
        settings: SegmentSettings,
    ) -> None:
        self._context = context
        self._compiled = compiled
        self._users = users
        self._clock = clock
        self._settings = settings

    def _transaction(
        self, conn: asyncpg.Connection
    ) -> contextlib.AbstractAsyncContextManager[UnitOfWork]:
        return transaction(conn, on_commit=self._context.relay.wake)

    async def refresh(self, segment_id: uuid.UUID, *, wait: bool = True) -> RefreshOutcome | None:
        """Recomputes the segment's members from every user; None when another
        refresh of it is running and `wait` is false."""
        async with connection(self._context.pool) as conn:
            if not await store.lock_for_refresh(conn, segment_id, wait=wait):
                return None
            try:
                # Read before the definition: a change committed after it is seen as one.
                changed_at = await store.changed_at(conn, segment_id)
                if changed_at is None:
                    raise segment_not_found(segment_id)
                await self._compiled.load(conn)
                return await self._refresh(conn, self._compiled.compile(segment_id), changed_at)
            except asyncpg.ForeignKeyViolationError as error:
                raise segment_not_found(segment_id) from error
            finally:
                await store.unlock_after_refresh(conn, segment_id)

    async def _refresh(
        self, conn: asyncpg.Connection, compiled: CompiledSegment, changed_at: datetime
    ) -> RefreshOutcome:
        segment = compiled.segment
        as_of = self._clock.now()
        # The day's size row first, holding no membership: the writes below then
        # update it without checking its segment, which a deletion in progress
        # locks (they would deadlock with it, holding the rows it deletes).
        await store.add_to_sizes(conn, {segment.id: 0}, as_of)
        # The next full refresh: at the interval, or when a user may enter by time
        # alone (a window reaching their moment, a time in stage passing), if sooner,
        # but not sooner than the gap (which the interval bounds).
        next_refresh = as_of + self._settings.refresh_interval
        soonest = min(next_refresh, as_of + self._settings.min_refresh_gap)
        matches = self._users.match(
            compiled.condition.expanded_json(), segment.stages, as_of, next_entry=True
        )
        # The matches come in user order: each batch covers the users after the
        # previous one's last up to its own last, and a last range runs to the end.
        changes = _Changes()
        after: str | None = None
        async for batch in matches:
            if batch.next_entry is not None:
                next_refresh = min(next_refresh, max(batch.next_entry, soonest))
            if batch.user_ids:
                through = batch.user_ids[-1]
                batch_range = MatchRange(batch.user_ids, batch.valid_until, after, through)
                await self._apply(conn, segment.id, as_of, batch_range, changes)
                after = through
        await self._apply(conn, segment.id, as_of, MatchRange([], [], after, None), changes)
        members = await store.finish_refresh(conn, segment.id, as_of, next_refresh, changed_at)
        return RefreshOutcome(changes.entered, changes.exited, members, as_of)

    async def _apply(
        self,
        conn: asyncpg.Connection,
        segment_id: uuid.UUID,
        as_of: datetime,
        matches: MatchRange,
        changes: _Changes,
    ) -> None:
        """Compares one range of a refresh with the cached members, a part of it at
        a time so that each transaction deletes at most about EXIT_BATCH of them."""
        cap = unix_micros(as_of + self._settings.membership_ttl)
        renew_before = unix_micros(as_of + self._settings.refresh_interval)
        after = matches.after
        while True:
            limit = len(matches.user_ids) + EXIT_BATCH
            cached = await store.cached_members(conn, segment_id, after, matches.through, limit)
            through = cached[-1][0] if len(cached) == limit else matches.through
            part = compare_range(matches.within(after, through), cached, cap, renew_before)
            if part.written or part.exited:
                await self._write_range(conn, segment_id, as_of, part, changes)
            if through == matches.through:
                return
            after = through

    async def _write_range(
        self,
        conn: asyncpg.Connection,
        segment_id: uuid.UUID,
        as_of: datetime,
        part: RangeChanges,
        changes: _Changes,
    ) -> None:
        async with self._transaction(conn) as uow:
            entered = await store.upsert_members(
                conn,
                [(uuid.UUID(user_id), segment_id) for user_id, _ in part.written],
                [from_unix_micros(micros) for _, micros in part.written],
                as_of,
            )
            exited = await store.delete_range_members(
                conn, segment_id, part.exited, part.after, part.through
            )
            self._publish(uow, segment_id, as_of, ENTERED, [user for user, _ in entered])
            self._publish(uow, segment_id, as_of, EXITED, exited)
            await _count(conn, {segment_id: len(entered) - len(exited)}, as_of)
        changes.entered += len(entered)
        changes.exited += len(exited)

    @staticmethod
    def _publish(
        uow: UnitOfWork,
        segment_id: uuid.UUID,
        at: datetime,
        event_type: str,
        user_ids: Sequence[uuid.UUID],
    ) -> None:
        if user_ids:
            events = EventBatch(PRODUCER, forwarded=MEMBERSHIP_EVENTS)
            data = dict_to_struct({"segment_id": str(segment_id)})
            for user_id in user_ids:
                events.add(event_type, at, user_id=user_id, data=data)
            events.publish(uow)

    async def reevaluate(self, changes: Iterable[UserChange]) -> tuple[int, int]:
        """Re-evaluates changed users against the segments their change concerns;
        returns (entered, exited)."""
        merged = merge_changes(changes)
        entered = exited = 0
        for start in range(0, len(merged), REEVALUATE_BATCH):
            chunk = merged[start : start + REEVALUATE_BATCH]
            async with self._context.unit_of_work() as uow:
                await self._compiled.load(uow.conn)
                segments = self._compiled.all()
                wanted = {
                    change.user_id: [s for s in segments if change.concerns(s)] for change in chunk
                }
                counts = await self._reevaluate(uow, wanted)
            entered, exited = entered + counts[0], exited + counts[1]
        return entered, exited

    async def due(self, limit: int) -> list[uuid.UUID]:
        """The segments whose full refresh is due (at most `limit`)."""
        return await store.due_segments(self._context.pool, self._clock.now(), limit)

    async def renew_expired(self) -> int:
        """Re-evaluates memberships whose validity ran out (at most a batch of them);
        returns how many."""
        pairs = await store.expired_memberships(
            self._context.pool, self._clock.now(), REEVALUATE_BATCH
        )
        if not pairs:
            return 0
        async with self._context.unit_of_work() as uow:
            await self._compiled.load(uow.conn)
            known = {segment.segment.id: segment for segment in self._compiled.all()}
            wanted: dict[uuid.UUID, list[CompiledSegment]] = defaultdict(list)
            for user_id, segment_id in pairs:
                if segment_id in known:
                    wanted[user_id].append(known[segment_id])
            await self._reevaluate(uow, wanted)
        return len(pairs)

    async def _reevaluate(
        self, uow: UnitOfWork, wanted: Mapping[uuid.UUID, Sequence[CompiledSegment]]
    ) -> tuple[int, int]:
        """Evaluates each user against their segments and writes the outcome, holding
        the segments' write locks from before the users are read."""
        current = await self._lock_definitions(uow.conn, [s for ss in wanted.values() for s in ss])
        wanted = {
            user_id: [current[s.segment.id] for s in segments if s.segment.id in current]
            for user_id, segments in wanted.items()
        }
        wanted = {user_id: segments for user_id, segments in wanted.items() if segments}
        if not wanted:
            return 0, 0
        await store.lock_for_writes(uow.conn, {s.segment.id for ss in wanted.values() for s in ss})
        erased = await tombstones.erased_among(uow.conn, list(wanted))
        reads = self._event_reads({s.segment.id: s for ss in wanted.values() for s in ss}.values())
        known = await self._users.profiles([u for u in wanted if u not in erased], reads)
        profiles = {user_id: user.profile for user_id, user in known.items()}
        # Users the users service no longer has are being erased: they belong to
        # no segment (quietly: no events about them), whatever their erase's delay.
        gone = await store.delete_members(
            uow.conn,
            [(u, s.segment.id) for u, ss in wanted.items() if u not in profiles for s in ss],
        )
        as_of = self._clock.now()
        verdicts = await judge(wanted, profiles, as_of, self._settings.membership_ttl)
        return await self._write(uow, verdicts, as_of, gone)

    async def _lock_definitions(
        self, conn: asyncpg.Connection, segments: Iterable[CompiledSegment]
    ) -> dict[uuid.UUID, CompiledSegment]:
        """The segments (those that still exist) compiled again from definitions
        that stay as they are until the transaction ends: the definition locks of
        the segments and of those they reference are shared, which a change waits
        for, and the definitions are loaded after. Otherwise an answer from the old
        definition, written after the change's moment, would pass for fresh."""
        compiled = {segment.segment.id: segment for segment in segments}
        wanted = set(compiled)
        locked: set[uuid.UUID] = set()
        while True:
            needed = wanted.union(*(c.condition.segment_ids() for c in compiled.values()))
            if needed <= locked:
                return compiled
            await store.lock_definitions(conn, needed - locked)
            locked |= needed
            await self._compiled.load(conn)
            known = self._compiled.definitions()
            compiled = {sid: self._compiled.compile(sid) for sid in wanted if sid in known}
            # A segment that is gone no longer needs its lock.
            wanted = set(compiled)

    async def _write(
        self,
        uow: UnitOfWork,
        verdicts: Mapping[tuple[uuid.UUID, uuid.UUID], Verdict],
        as_of: datetime,
        gone: Sequence[tuple[uuid.UUID, uuid.UUID]] = (),
    ) -> tuple[int, int]:
        """Writes the verdicts, their events and the sizes they change, with the
        memberships of users `gone` (removed without events)."""
        members = [pair for pair, verdict in verdicts.items() if verdict.member]
        others = [pair for pair, verdict in verdicts.items() if not verdict.member]
        entered = await store.upsert_members(
            uow.conn, members, [verdicts[pair].valid_until for pair in members], as_of
        )
        exited = await store.delete_members(uow.conn, others)
        for event_type, pairs in ((ENTERED, entered), (EXITED, exited)):
            by_segment: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
            for user_id, segment_id in pairs:
                by_segment[segment_id].append(user_id)
            for segment_id, user_ids in by_segment.items():
                self._publish(uow, segment_id, as_of, event_type, user_ids)
        await _count(uow.conn, size_changes(entered, [*exited, *gone]), as_of)
        return len(entered), len(exited)

    async def check(self, user_id: uuid.UUID, segment_id: uuid.UUID) -> CheckOutcome:
        pool = self._context.pool
        if await store.get_segment(pool, segment_id) is None:
            raise segment_not_found(segment_id)
        cached = await store.get_membership(pool, user_id, segment_id)
        if cached is not None and cached.valid_at(self._clock.now()):
            membership = cached.membership
            return CheckOutcome(True, membership.evaluated_at, membership.valid_until, True)
        async with self._context.unit_of_work() as uow:
            await self._compiled.load(uow.conn)
            read = self._compiled.compile(segment_id)
            compiled = (await self._lock_definitions(uow.conn, [read])).get(segment_id)
            if compiled is None:
                raise segment_not_found(segment_id)
            # A refresh in progress will write this user too: answer without caching.
            locked = await store.lock_for_writes(uow.conn, [segment_id], wait=False)
            profile = await self._profile(uow.conn, user_id, compiled)
            as_of = self._clock.now()
            verdict = compiled.verdict(profile, as_of, self._settings.membership_ttl)
            if locked:
                await self._write(uow, {(user_id, segment_id): verdict}, as_of)
        return CheckOutcome(verdict.member, as_of, verdict.valid_until, False)

    def _event_reads(self, segments: Iterable[CompiledSegment]) -> EventReads:
        """The events the segments' event leaves read, from a moment no later than
        the `as_of` they are evaluated at (taken after the profiles are read)."""
        leaves = (leaf for segment in segments for leaf in segment.event_leaves)
        return event_reads(leaves, self._clock.now())

    async def _profile(
        self, conn: Executor, user_id: uuid.UUID, segment: CompiledSegment
    ) -> UserProfile:
        if await tombstones.erased_among(conn, [user_id]):
            raise user_not_found(user_id)
        reads = self._event_reads([segment])
        user = (await self._users.profiles([user_id], reads)).get(user_id)
        if user is None:
            raise user_not_found(user_id)
        return user.profile

    async def explain(self, user_id: uuid.UUID, segment_id: uuid.UUID) -> Explanation:
        async with connection(self._context.pool) as conn:
            await self._compiled.load(conn)
            compiled = self._compiled.compile(segment_id)
            profile = await self._profile(conn, user_id, compiled)
        as_of = self._clock.now()
        verdict = compiled.verdict(profile, as_of, self._settings.membership_ttl)
        leaves = compiled.evaluator.explain(Context(as_of=as_of, user=profile))
        return Explanation(
            verdict.member, compiled.stage_matches(profile), leaves, verdict.valid_until
        )

    async def members(
        self, segment_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[Membership]:
        pool = self._context.pool
        if await store.get_segment(pool, segment_id) is None:
            raise segment_not_found(segment_id)
        return await store.list_members(pool, segment_id, after, limit)

    async def sizes(self, segment_id: uuid.UUID, first: date, last: date) -> list[SegmentSize]:
        """The segment's size on each day from `first` to `last` it existed by
        (today at the latest)."""
        pool = self._context.pool
        if await store.get_segment(pool, segment_id) is None:
            raise segment_not_found(segment_id)
        last = min(last, utc_day(self._clock.now()))
        return await store.list_sizes(pool, segment_id, first, last) if first <= last else []

    async def of_user(self, user_id: uuid.UUID) -> list[Membership]:
        return await store.user_memberships(self._context.pool, user_id)

    async def erase(self, user_id: uuid.UUID) -> int:
        """Removes the user's memberships and keeps a tombstone, once every writer
        of memberships (a refresh in progress, say) is done."""
        async with self._context.unit_of_work() as uow:
            segment_ids = list(await store.segment_versions(uow.conn))
            await store.lock_for_writes(uow.conn, segment_ids)
            # Their segments' rows before their memberships: a segment being deleted
            # is waited for, rather than deadlocked with over its sizes' foreign key.
            memberships = await store.user_memberships(uow.conn, user_id)
            await store.lock_segments(uow.conn, [m.segment_id for m in memberships])
            left = await store.erase_user(uow.conn, user_id)
            await _count(uow.conn, {segment_id: -1 for segment_id in left}, self._clock.now())
            return len(left)
