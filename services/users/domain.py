"""The rules of users: what a valid email and attribute set are, what changed,
and the lifecycle events a change produces. No I/O here."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conditions import Condition
from runtime.chains import Chain
from runtime.errors import Violations
from runtime.structs import JsonObject, compact_json, unix_micros
from services.users.events import StoredEvent

MAX_EMAIL_LENGTH = 255
MAX_ATTRIBUTES_BYTES = 64 * 1024
DEFAULT_STAGE = "Acquisition"
# Deliberately simple: one @, no spaces or control characters, a dot in the domain.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f.]+$")


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    stage: str
    attributes: JsonObject
    created_at: datetime
    updated_at: datetime

    @property
    def etag(self) -> str:
        """Changes whenever the user does (every change sets updated_at); opaque
        to callers. Only ever compared with the same user's, so the time alone
        serves, and costs every read far less than a digest."""
        return f"{unix_micros(self.updated_at):x}"


@dataclass(frozen=True)
class Transition:
    id: int
    user_id: uuid.UUID
    from_stage: str | None
    to_stage: str
    transitioned_at: datetime
    workflow_execution_id: uuid.UUID | None
    metadata: JsonObject


@dataclass(frozen=True)
class StageChange:
    """A requested move of a user to a stage."""

    to_stage: str
    workflow_execution_id: uuid.UUID | None
    metadata: JsonObject
    # Record a move to the stage the user is in, instead of refusing it.
    allow_same_stage: bool = False


@dataclass(frozen=True)
class UserChange:
    """An update of a user: a new email, and attributes as a merge patch or a replacement."""

    email: str | None = None
    # Compact JSON text, or None to leave the attributes as they are.
    attributes_json: str | None = None
    replace_attributes: bool = False


@dataclass(frozen=True)
class UserFilter:
    stages: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class ImportRow:
    """A valid row of ImportUsers, upserted by email."""

    index: int
    email: str
    stage: str | None
    # The merge patch as compact JSON text, serialized once when it was validated.
    attributes_json: str


@dataclass(frozen=True)
class ConditionQuery:
    """A condition of the shared language asked of the users (MatchUserIds,
    CountUsers), and what else restricts the users it looks at."""

    condition: Condition
    # The moment the condition's times are read at.
    as_of: datetime
    stages: tuple[str, ...] = ()
    user_ids: tuple[uuid.UUID, ...] = ()
    limit: int = 0
    # Also the earliest moment one of the users who do not match starts to by
    # time alone (no limit then: it reads every user who may match later).
    next_entry: bool = False


@dataclass(frozen=True)
class MatchBatch:
    # The matching users in ascending id order (as text), and for each, when time
    # alone may end its match, in microseconds since the Unix epoch (0: never).
    user_ids: list[str]
    valid_until: list[int]
    # With next_entry: the earliest moment one of the batch's users who do not
    # match starts to by time alone; None if none.
    next_entry: datetime | None = None


@dataclass(frozen=True)
class Profile:
    """What a condition evaluated outside the users service reads of a user."""

    user_id: uuid.UUID
    stage: str
    # As stored, so that numbers stay exact.
    attributes_json: str
    created_at: datetime
    stage_entered_at: datetime | None
    # The tracked events the request asked for, oldest first.
    events: tuple[StoredEvent, ...] = ()


def normalize_email(raw: str, field: str, violations: Violations) -> str:
    """The email as stored: trimmed, otherwise as given."""
    email = raw.strip()
    if not email:
        violations.add(field, "is required")
    elif len(email) > MAX_EMAIL_LENGTH:
        violations.add(field, f"must be at most {MAX_EMAIL_LENGTH} characters")
    elif not _EMAIL.match(email):
        violations.add(field, "is not an email address")
    return email


def encode_attributes(attributes: JsonObject, field: str, violations: Violations) -> str:
    """The attributes as the JSON text stored, checked against the size limit."""
    text = compact_json(attributes)
    if len(text.encode()) > MAX_ATTRIBUTES_BYTES:
        violations.add(field, f"must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    return text


def moved_by(metadata: JsonObject, actors: Chain) -> JsonObject:
    """A move's metadata as the history records it: what the caller gave, and
    who moved the user, `actors`, which the service alone sets (a caller
    cannot pass a move off as someone else's)."""
    return {**metadata, "actors": list(actors)}


def attribute_changes(before: JsonObject, after: JsonObject) -> dict[str, dict[str, Any]]:
    """Top-level keys whose value changed, with their old and new values (None when absent)."""
    return {
        key: {"from": before.get(key), "to": after.get(key)}
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key) or (key in before) != (key in after)
    }
