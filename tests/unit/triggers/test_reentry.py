"""Trigger re-entry without PostgreSQL: which policies are valid, and what a
batch of evaluations decides before the statement that stores it (the first
firing of a user claims a limited trigger's entry; a repeat in the batch is
over the limit and asks for no start)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import struct_pb2

from conditions import Evaluator, UserProfile
from runtime.errors import Violations
from services.triggers.domain import (
    EVERY_TIME,
    MAX_PERIOD,
    ONCE_PER_PERIOD,
    ONCE_PER_USER,
    REENTRY_LIMIT,
    Action,
    CompiledTrigger,
    EntryClaims,
    EntryDecision,
    Event,
    Reentry,
    TriggerSet,
    check_reentry,
    parse_trigger_condition,
)
from services.triggers.ingest import IngestPipeline

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def trigger(reentry: Reentry, conditions: dict[str, object] | None = None) -> CompiledTrigger:
    condition = parse_trigger_condition(conditions or {}, "conditions")
    evaluator = Evaluator(condition) if condition is not None else None
    return CompiledTrigger(uuid.uuid4(), Action(uuid.uuid4()), reentry, evaluator)


# ------------------------------------------------------------------ policies


def checked(mode: str, period: timedelta | None) -> tuple[Reentry, list[str]]:
    violations = Violations()
    reentry = check_reentry(mode, period, "trigger.reentry", violations)
    return reentry, [f"{v.field}: {v.description}" for v in violations.items]


def test_every_time_is_the_only_unlimited_policy() -> None:
    assert not Reentry().limited
    assert Reentry().mode == EVERY_TIME
    assert Reentry(ONCE_PER_USER).limited
    assert Reentry(ONCE_PER_PERIOD, HOUR).limited


@pytest.mark.parametrize("mode", [EVERY_TIME, ONCE_PER_USER])
def test_a_period_applies_to_once_per_period_only(mode: str) -> None:
    assert checked(mode, None) == (Reentry(mode), [])
    _, problems = checked(mode, HOUR)
    assert problems == ["trigger.reentry.period: applies to ONCE_PER_PERIOD only"]


@pytest.mark.parametrize(
    ("period", "problem"),
    [
        (None, "must be a positive duration for ONCE_PER_PERIOD"),
        (timedelta(0), "must be a positive duration for ONCE_PER_PERIOD"),
        (-HOUR, "must be a positive duration for ONCE_PER_PERIOD"),
        (MAX_PERIOD + timedelta(days=1), f"must be at most {MAX_PERIOD.days} days"),
    ],
)
def test_once_per_period_needs_a_period_within_bounds(
    period: timedelta | None, problem: str
) -> None:
    _, problems = checked(ONCE_PER_PERIOD, period)
    assert problems == [f"trigger.reentry.period: {problem}"]


def test_once_per_period_keeps_its_period() -> None:
    assert checked(ONCE_PER_PERIOD, MAX_PERIOD) == (Reentry(ONCE_PER_PERIOD, MAX_PERIOD), [])


# ------------------------------------------------------------------ claims in a batch


@pytest.mark.parametrize("reentry", [Reentry(ONCE_PER_USER), Reentry(ONCE_PER_PERIOD, HOUR)])
def test_a_limited_trigger_is_claimed_by_the_first_firing_of_a_user(reentry: Reentry) -> None:
    claims, limited, user = EntryClaims(), trigger(reentry), uuid.uuid4()
    assert claims.decide(limited, user, met=True) == EntryDecision(claim=True)
    assert claims.decide(limited, user, met=True) == EntryDecision(skip=REENTRY_LIMIT)
    assert claims.decide(limited, user, met=True) == EntryDecision(skip=REENTRY_LIMIT)


def test_claims_are_per_trigger_and_per_user() -> None:
    claims, first, second = (
        EntryClaims(),
        trigger(Reentry(ONCE_PER_USER)),
        trigger(Reentry(ONCE_PER_USER)),
    )
    alice, bob = uuid.uuid4(), uuid.uuid4()
    assert claims.decide(first, alice, met=True).claim
    assert claims.decide(first, bob, met=True).claim
    assert claims.decide(second, alice, met=True).claim
    assert claims.decide(first, alice, met=True).skip == REENTRY_LIMIT


def test_a_condition_that_failed_claims_nothing() -> None:
    claims, limited, user = EntryClaims(), trigger(Reentry(ONCE_PER_USER)), uuid.uuid4()
    assert claims.decide(limited, user, met=False) == EntryDecision()
    assert claims.decide(limited, user, met=True) == EntryDecision(claim=True)
    assert claims.decide(limited, user, met=False) == EntryDecision(), "not met is never skipped"


def test_every_time_never_claims() -> None:
    claims, unlimited, user = EntryClaims(), trigger(Reentry()), uuid.uuid4()
    for _ in range(3):
        assert claims.decide(unlimited, user, met=True) == EntryDecision()


# ------------------------------------------------------------------ a batch evaluated


class Buyer:
    stage = "Activation"
    profile = UserProfile({"plan": "pro"}, "Activation", NOW, NOW)


def purchase(index: int, user_id: uuid.UUID, amount: int) -> Event:
    data = {"amount": amount}
    struct = struct_pb2.Struct()
    struct.update(data)
    return Event(
        index,
        user_id,
        None,
        "purchase",
        data,
        struct,
        json.dumps(data),
        NOW,
        f"m{index}",
        user=Buyer(),
    )


async def test_a_batch_asks_for_one_start_per_user_of_a_limited_trigger() -> None:
    big = {"v": 1, "attr": "amount", "op": "gt", "value": 100, "src": "event"}
    once, every = trigger(Reentry(ONCE_PER_USER), big), trigger(Reentry(), big)
    triggers = TriggerSet(1, [("purchase", once), ("purchase", every)])
    alice, bob = uuid.uuid4(), uuid.uuid4()
    events = [
        purchase(0, alice, 50),
        purchase(1, alice, 500),
        purchase(2, bob, 500),
        purchase(3, alice, 900),
    ]
    pipeline = IngestPipeline.__new__(IngestPipeline)

    rows = (await pipeline._evaluate(events, triggers, NOW)).evaluations

    decided = [
        (message_id, trigger_id == once.id, met, claim, skip, request is not None)
        for message_id, trigger_id, met, claim, skip, request in zip(
            rows.message_ids,
            rows.trigger_ids,
            rows.met,
            rows.claims,
            rows.skips,
            rows.requests,
            strict=True,
        )
    ]
    assert decided == [
        # Alice's small purchase meets neither: nothing claimed, nothing started.
        ("m0", True, False, False, None, False),
        ("m0", False, False, False, None, False),
        # Her first big one claims the limited trigger's entry and asks for starts.
        ("m1", True, True, True, None, True),
        ("m1", False, True, False, None, True),
        # Bob's is his own entry.
        ("m2", True, True, True, None, True),
        ("m2", False, True, False, None, True),
        # Her second big one is over the limit in the batch: no start; every_time starts.
        ("m3", True, True, False, REENTRY_LIMIT, False),
        ("m3", False, True, False, None, True),
    ]
