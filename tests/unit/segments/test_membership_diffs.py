"""Who enters and who leaves a segment, without PostgreSQL: a full refresh
compared range by range with the cached members, one user's verdict and how
long it holds, and which segments a change of a user re-evaluates."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from conditions import SEGMENT, UserProfile, parse_condition
from services.segments.domain import (
    CachedMembership,
    CompiledSegment,
    MatchRange,
    Membership,
    Segment,
    UserChange,
    compare_range,
    merge_changes,
)

AS_OF = datetime(2030, 1, 1, tzinfo=UTC)
TTL = timedelta(hours=1)
CAP, RENEW_BEFORE = 1_000, 100
SEEN_TODAY = {"v": 1, "attr": "seen", "op": "within_last", "value": "P1D"}
PRO = {"v": 1, "attr": "plan", "op": "eq", "value": "pro"}


def user_ids(count: int) -> list[str]:
    return sorted(str(uuid.UUID(int=random.getrandbits(128), version=4)) for _ in range(count))


def compiled(conditions: dict[str, object], stages: tuple[str, ...] = ()) -> CompiledSegment:
    segment = Segment(uuid.uuid4(), "s", "", conditions, stages, AS_OF, AS_OF)
    return CompiledSegment.of(segment, parse_condition(conditions, "conditions", SEGMENT))


def profile(stage: str = "Activation", **attributes: object) -> UserProfile:
    return UserProfile(attributes, stage, AS_OF, AS_OF)


# ------------------------------------------------------------------ a refresh, range by range


def test_the_last_range_without_matches_makes_every_cached_member_exit() -> None:
    cached = user_ids(3)
    changes = compare_range(
        MatchRange([], [], None, None), [(u, 500) for u in cached], CAP, RENEW_BEFORE
    )
    assert changes.written == []
    assert changes.exited == cached


def test_a_match_is_valid_until_its_own_end_or_the_cap() -> None:
    a, b, c = user_ids(3)
    changes = compare_range(
        MatchRange([a, b, c], [0, 50, 5_000], None, None), [], CAP, RENEW_BEFORE
    )
    # 0: time alone never ends the match; past the cap: capped.
    assert changes.written == [(a, CAP), (b, 50), (c, CAP)]
    assert changes.exited == []


@pytest.mark.parametrize("seed", range(20))
def test_a_refresh_in_ranges_makes_each_user_enter_or_leave_once(seed: int) -> None:
    """However the matches are cut into ranges, the users who enter are the
    matches not cached, and those who leave the cached who no longer match."""
    random.seed(seed)
    everyone = user_ids(60)
    matching = sorted(random.sample(everyone, 25))
    cached = sorted(random.sample(everyone, 25))
    cuts = sorted(random.sample(range(1, len(matching)), 3))
    batches = [matching[i:j] for i, j in zip([0, *cuts], [*cuts, len(matching)], strict=True)]
    entered: list[str] = []
    exited: list[str] = []
    after: str | None = None
    # As the handler does: each batch up to its last match, then the rest of the users.
    ranges: list[tuple[list[str], str | None]] = [(batch, batch[-1]) for batch in batches]
    ranges.append(([], None))
    for batch, through in ranges:
        in_range = [
            (u, 500)
            for u in cached
            if (after is None or u > after) and (through is None or u <= through)
        ]
        changes = compare_range(
            MatchRange(batch, [0] * len(batch), after, through), in_range, CAP, RENEW_BEFORE
        )
        entered += [u for u, _ in changes.written if u not in cached]
        exited += changes.exited
        after = through
    assert entered == sorted(set(matching) - set(cached))
    assert sorted(exited) == sorted(set(cached) - set(matching))


# ------------------------------------------------------------------ one user's verdict


def test_a_member_holds_until_time_alone_ends_the_match() -> None:
    seen = AS_OF - timedelta(hours=23, minutes=30)
    user = profile(seen=seen.strftime("%Y-%m-%dT%H:%M:%SZ"))
    segment = compiled(SEEN_TODAY)
    verdict = segment.verdict(user, AS_OF, TTL)
    assert verdict.member
    assert AS_OF < verdict.valid_until < AS_OF + TTL
    # At that moment the user leaves; a moment before, still a member.
    assert not segment.verdict(user, verdict.valid_until, TTL).member
    assert segment.verdict(user, verdict.valid_until - timedelta(seconds=1), TTL).member


def test_a_verdict_time_cannot_change_holds_for_the_ttl() -> None:
    verdict = compiled(PRO).verdict(profile(plan="pro"), AS_OF, TTL)
    assert (verdict.member, verdict.valid_until) == (True, AS_OF + TTL)
    verdict = compiled(PRO).verdict(profile(plan="free"), AS_OF, TTL)
    assert (verdict.member, verdict.valid_until) == (False, AS_OF + TTL)


def test_a_user_outside_the_stages_is_no_member_until_the_ttl() -> None:
    seen = (AS_OF - timedelta(hours=23, minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    segment = compiled(SEEN_TODAY, stages=("Retention",))
    verdict = segment.verdict(profile("Activation", seen=seen), AS_OF, TTL)
    # Time alone never brings a user into the stages: the window closing changes nothing.
    assert (verdict.member, verdict.valid_until) == (False, AS_OF + TTL)
    assert segment.verdict(profile("Retention", seen=seen), AS_OF, TTL).member


@pytest.mark.parametrize(
    ("valid_until", "stale", "valid"),
    [
        (AS_OF + timedelta(seconds=1), False, True),
        (AS_OF, False, False),
        (None, False, False),
        (AS_OF + timedelta(seconds=1), True, False),
    ],
)
def test_a_cached_membership_answers_only_while_valid_and_not_stale(
    valid_until: datetime | None, stale: bool, valid: bool
) -> None:
    membership = Membership(uuid.uuid4(), uuid.uuid4(), AS_OF - TTL, valid_until)
    assert CachedMembership(membership, stale).valid_at(AS_OF) is valid


# ------------------------------------------------------------------ what a change concerns


def test_a_change_concerns_the_segments_that_read_what_changed() -> None:
    plan, seen, staged = compiled(PRO), compiled(SEEN_TODAY), compiled(PRO, stages=("Revenue",))
    user = uuid.uuid4()
    of_plan = UserChange(user, frozenset({"plan"}))
    assert [of_plan.concerns(s) for s in (plan, seen, staged)] == [True, False, True]
    of_stage = UserChange(user, stage_changed=True)
    assert [of_stage.concerns(s) for s in (plan, seen, staged)] == [False, False, True]
    new = UserChange(user, everything=True)
    assert all(new.concerns(s) for s in (plan, seen, staged))


def test_changes_of_one_user_merge_into_one() -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    merged = merge_changes(
        [
            UserChange(alice, frozenset({"plan"})),
            UserChange(bob, frozenset({"seen"})),
            UserChange(alice, frozenset({"seen"}), stage_changed=True),
        ]
    )
    assert merged == [
        UserChange(alice, frozenset({"plan", "seen"}), stage_changed=True),
        UserChange(bob, frozenset({"seen"})),
    ]
