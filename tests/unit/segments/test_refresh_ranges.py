"""How a full refresh compares a range of matches with the cached members of
the range (services.segments.domain): no I/O."""

from __future__ import annotations

import pytest

from services.segments.domain import MatchRange, compare_range

A, B, C, D = (f"{n}0000000-0000-4000-8000-000000000000" for n in range(1, 5))
CAP = 1_000
RENEW_BEFORE = 100


def test_new_matches_enter_and_missing_members_exit() -> None:
    matches = MatchRange([A, C], [0, 50], None, D)
    changes = compare_range(matches, [(B, 500), (C, 500), (D, None)], CAP, RENEW_BEFORE)
    # A enters, capped; C's validity shrinks from 500 to 50; B and D exit.
    assert changes.written == [(A, CAP), (C, 50)]
    assert sorted(changes.exited) == [B, D]
    assert (changes.after, changes.through) == (None, D)


@pytest.mark.parametrize(
    ("cached", "rewritten"),
    [
        (120, False),  # valid past the next refresh, and no later than the match now ends
        (RENEW_BEFORE, True),  # runs out before the next refresh
        (200, True),  # the match now ends sooner (at 150)
        (None, True),  # unbounded in the cache: bounded now
    ],
)
def test_a_cached_member_is_renewed_only_when_its_validity_must_change(
    cached: int | None, rewritten: bool
) -> None:
    matches = MatchRange([A], [150], None, None)
    changes = compare_range(matches, [(A, cached)], CAP, RENEW_BEFORE)
    assert changes.written == ([(A, 150)] if rewritten else [])
    assert changes.exited == []


def test_within_takes_the_matches_of_a_part_of_the_range() -> None:
    matches = MatchRange([A, B, C], [1, 2, 3], None, D)
    part = matches.within(A, C)
    assert (list(part.user_ids), list(part.valid_until)) == ([B, C], [2, 3])
    assert (part.after, part.through) == (A, C)


@pytest.mark.parametrize(
    ("user_ids", "after", "through"),
    [([B, A], None, None), ([A, A], None, None), ([A, B], B, None), ([A, C], None, B)],
)
def test_matches_out_of_user_order_or_range_are_refused(
    user_ids: list[str], after: str | None, through: str | None
) -> None:
    # Applied, they would delete members that match.
    with pytest.raises(ValueError, match="matches must"):
        MatchRange(user_ids, [0] * len(user_ids), after, through)
