"""The rules of segments: what a valid segment is, how its references resolve,
how a compiled segment decides one user's membership and its validity, when a
cached membership holds, which changes concern which segments, and what a
refresh changes over a range of users. No I/O here."""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from conditions import (
    EXPANDED,
    Condition,
    Context,
    Dependencies,
    Evaluator,
    ReferenceProblem,
    SegmentDefinition,
    UserProfile,
    resolve,
    size,
)
from conditions.model import EventLeaf
from runtime.errors import InvalidArgument, NotFound, Violations
from runtime.structs import JsonObject

PRODUCER = "segments"
MAX_DESCRIPTION_LENGTH = 4096
ENTERED = "segment.entered"
EXITED = "segment.exited"
# Entering and leaving a segment are also user events the triggers service fires on.
MEMBERSHIP_EVENTS = frozenset({ENTERED, EXITED})


@dataclass(frozen=True)
class Segment:
    id: uuid.UUID
    name: str
    description: str
    conditions: JsonObject
    stages: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    member_count: int = 0
    evaluated_at: datetime | None = None


@dataclass(frozen=True)
class SegmentFields:
    """A validated create or update; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    conditions: JsonObject | None = None
    condition: Condition | None = None
    stages: tuple[str, ...] | None = None

    @property
    def definition_changed(self) -> bool:
        return self.conditions is not None or self.stages is not None


@dataclass(frozen=True)
class Membership:
    user_id: uuid.UUID
    segment_id: uuid.UUID
    evaluated_at: datetime
    valid_until: datetime | None


@dataclass(frozen=True)
class CachedMembership:
    """A membership as the cache holds it."""

    membership: Membership
    # Confirmed before the segment's definition last changed.
    stale: bool

    def valid_at(self, now: datetime) -> bool:
        valid_until = self.membership.valid_until
        return not self.stale and valid_until is not None and valid_until > now


@dataclass(frozen=True)
class Verdict:
    """One user's membership in one segment, as evaluated at `as_of`."""

    member: bool
    valid_until: datetime


@dataclass(frozen=True)
class SegmentSize:
    """A segment's member count on a day: the day's last, or carried from the
    last day before it with one."""

    day: date
    members: int
    recorded_at: datetime


def utc_day(moment: datetime) -> date:
    """The UTC day of a moment: sizes are kept per UTC day."""
    return moment.astimezone(UTC).date()


def size_changes(
    entered: Iterable[tuple[uuid.UUID, uuid.UUID]], exited: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, int]:
    """Each segment's net change of members from the (user, segment) pairs that
    entered and exited; segments with none are left out."""
    changes = Counter(segment for _, segment in entered)
    changes.subtract(segment for _, segment in exited)
    return {segment: change for segment, change in changes.items() if change}


def segment_not_found(segment_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"segment {segment_id} does not exist",
        reason="SEGMENT_NOT_FOUND",
        metadata={"segment_id": str(segment_id)},
    )


def user_not_found(user_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"user {user_id} does not exist",
        reason="USER_NOT_FOUND",
        metadata={"user_id": str(user_id)},
    )


def check_description(description: str, field: str, violations: Violations) -> str:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        violations.add(field, f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    return description


def resolved(
    condition: Condition,
    definitions: Mapping[uuid.UUID, SegmentDefinition],
    owner: uuid.UUID | None,
    field: str,
) -> Condition:
    """The condition with its in_segment references resolved; INVALID_ARGUMENT at the
    reference that names no segment or closes a cycle, or if it grows too large."""
    try:
        result = resolve(condition, definitions, (owner,) if owner else ())
    except ReferenceProblem as problem:
        at = f"{field}.{problem.location}" if problem.location else field
        raise InvalidArgument.field(at, problem.message) from problem
    nodes, depth = size(result)
    if nodes > EXPANDED.max_nodes or depth > EXPANDED.max_depth:
        raise InvalidArgument.field(
            field,
            f"with the segments it references inlined it has {nodes} nodes and depth {depth};"
            f" at most {EXPANDED.max_nodes} and {EXPANDED.max_depth} are allowed",
        )
    return result


@dataclass(frozen=True)
class CompiledSegment:
    """A segment ready to evaluate: its condition with every in_segment resolved."""

    segment: Segment
    condition: Condition
    evaluator: Evaluator
    dependencies: Dependencies
    # What it reads of people's events: their profiles must carry those.
    event_leaves: tuple[EventLeaf, ...] = ()

    @classmethod
    def of(cls, segment: Segment, condition: Condition) -> CompiledSegment:
        dependencies = condition.dependencies()
        if segment.stages:
            dependencies = replace(dependencies, stage=True)
        leaves = tuple(condition.event_leaves())
        return cls(segment, condition, Evaluator(condition), dependencies, leaves)

    def stage_matches(self, profile: UserProfile) -> bool:
        return not self.segment.stages or profile.stage in self.segment.stages

    def verdict(self, profile: UserProfile, as_of: datetime, ttl: timedelta) -> Verdict:
        """Whether the user is a member, and until when that answer holds: the
        first moment time alone may change it, at most `ttl` ahead."""
        context = Context(as_of=as_of, user=profile)
        in_stages = self.stage_matches(profile)
        member = in_stages and self.evaluator.matches(context)
        # Time alone never brings a user into the segment's stages.
        flip = self.evaluator.valid_until(context) if in_stages else None
        cap = as_of + ttl
        return Verdict(member, min(flip, cap) if flip is not None else cap)

    def concerns(
        self, attribute_keys: Iterable[str], stage_changed: bool, event_types: Iterable[str] = ()
    ) -> bool:
        """Whether a change of these attributes (or of the stage), or new events of
        these types, may change membership."""
        if stage_changed and self.dependencies.stage:
            return True
        if any(map(self.dependencies.reads_event, event_types)):
            return True
        return not self.dependencies.attribute_keys.isdisjoint(attribute_keys)


@dataclass(frozen=True)
class UserChange:
    """What changed of a user, so that only the segments it concerns are re-evaluated."""

    user_id: uuid.UUID
    attribute_keys: frozenset[str] = frozenset()
    stage_changed: bool = False
    # New users, expired memberships and explicit requests: every segment.
    everything: bool = False
    # Types of the tracked events the users service recorded for the user.
    event_types: frozenset[str] = frozenset()

    def concerns(self, segment: CompiledSegment) -> bool:
        return self.everything or segment.concerns(
            self.attribute_keys, self.stage_changed, self.event_types
        )

    def merge(self, other: UserChange) -> UserChange:
        return UserChange(
            self.user_id,
            self.attribute_keys | other.attribute_keys,
            self.stage_changed or other.stage_changed,
            self.everything or other.everything,
            self.event_types | other.event_types,
        )


def merge_changes(changes: Iterable[UserChange]) -> list[UserChange]:
    """One change per user, combining what several messages reported."""
    merged: dict[uuid.UUID, UserChange] = {}
    for change in changes:
        known = merged.get(change.user_id)
        merged[change.user_id] = change if known is None else known.merge(change)
    return list(merged.values())


@dataclass(frozen=True)
class MatchRange:
    """Matches of a full refresh and the range of users they cover: every user
    after `after` (from the first when None) up to `through` (to the last when
    None) who matches is in `user_ids`. Ids are canonical UUID text, in order
    (UUIDs and their text sort alike)."""

    user_ids: Sequence[str]
    # When time alone may end each match, in microseconds since the Unix epoch; 0: never.
    valid_until: Sequence[int]
    after: str | None
    through: str | None

    def __post_init__(self) -> None:
        # A refresh deletes the members of a range that are not in it: matches out
        # of order would delete members.
        ids = [self.after, *self.user_ids] if self.after is not None else self.user_ids
        if any(left >= right for left, right in itertools.pairwise(ids)):
            raise ValueError("matches must come in ascending user order, each once")
        if self.through is not None and ids and ids[-1] > self.through:
            raise ValueError("matches must not pass the end of their range")

    def within(self, after: str | None, through: str | None) -> MatchRange:
        """The matches of the part (after, through] of the range."""
        start = 0 if after is None else bisect.bisect_right(self.user_ids, after)
        end = len(self.user_ids) if through is None else bisect.bisect_right(self.user_ids, through)
        return MatchRange(self.user_ids[start:end], self.valid_until[start:end], after, through)


@dataclass(frozen=True)
class RangeChanges:
    # Memberships to write (new, or renewed), with their valid_until in microseconds.
    written: list[tuple[str, int]]
    exited: list[str]
    # The range they are in (as in MatchRange).
    after: str | None
    through: str | None


def compare_range(
    matches: MatchRange, cached: Iterable[tuple[str, int | None]], cap: int, renew_before: int
) -> RangeChanges:
    """What a refresh changes over one range, from the matches and the cached
    members of the range (valid_until in microseconds, None if unbounded): the
    new members; the cached ones whose validity must shrink or runs out before
    `renew_before`, renewed; both capped at `cap`; and the members that no longer
    match."""
    known = dict(cached)
    written = []
    for user_id, micros in zip(matches.user_ids, matches.valid_until, strict=True):
        valid_until = min(micros, cap) if micros else cap
        if user_id not in known:
            written.append((user_id, valid_until))
            continue
        before = known.pop(user_id)
        if before is None or before > valid_until or before <= renew_before:
            written.append((user_id, valid_until))
    return RangeChanges(written, list(known), matches.after, matches.through)
