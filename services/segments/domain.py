"""The rules of segments: what a valid segment is, how a compiled segment
decides one user's membership and its validity, which changes concern which
segments, and the events a membership change produces. No I/O here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from runtime.conditions import Condition, Context, Dependencies, Evaluator, UserProfile
from runtime.errors import Violations
from runtime.structs import JsonObject

PRODUCER = "segments"
MAX_NAME_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 4096
ENTERED = "segment.entered"
EXITED = "segment.exited"
# Entering and leaving a segment are also user events the triggers service fires on.
MEMBERSHIP_EVENTS = frozenset({ENTERED, EXITED})

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


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
class Verdict:
    """One user's membership in one segment, as evaluated at `as_of`."""

    member: bool
    valid_until: datetime


def check_name(name: str, field: str, violations: Violations) -> str:
    name = name.strip()
    if not name:
        violations.add(field, "is required")
    elif len(name) > MAX_NAME_LENGTH:
        violations.add(field, f"must be at most {MAX_NAME_LENGTH} characters")
    return name


def check_description(description: str, field: str, violations: Violations) -> str:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        violations.add(field, f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    return description


@dataclass(frozen=True)
class CompiledSegment:
    """A segment ready to evaluate: its condition with every in_segment resolved."""

    segment: Segment
    condition: Condition
    evaluator: Evaluator
    dependencies: Dependencies

    @classmethod
    def of(cls, segment: Segment, condition: Condition) -> CompiledSegment:
        dependencies = condition.dependencies()
        if segment.stages:
            dependencies = Dependencies(dependencies.attribute_keys, stage=True)
        return cls(segment, condition, Evaluator(condition), dependencies)

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

    def concerns(self, attribute_keys: Iterable[str], stage_changed: bool) -> bool:
        """Whether a change of these attributes (or of the stage) may change membership."""
        if stage_changed and self.dependencies.stage:
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

    def concerns(self, segment: CompiledSegment) -> bool:
        return self.everything or segment.concerns(self.attribute_keys, self.stage_changed)

    def merge(self, other: UserChange) -> UserChange:
        return UserChange(
            self.user_id,
            self.attribute_keys | other.attribute_keys,
            self.stage_changed or other.stage_changed,
            self.everything or other.everything,
        )


def merge_changes(changes: Iterable[UserChange]) -> list[UserChange]:
    """One change per user, combining what several messages reported."""
    merged: dict[uuid.UUID, UserChange] = {}
    for change in changes:
        known = merged.get(change.user_id)
        merged[change.user_id] = change if known is None else known.merge(change)
    return list(merged.values())
