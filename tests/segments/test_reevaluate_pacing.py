"""A batch of users evaluated against their segments lets other tasks run as it
goes (a thousand users against fifty segments took up to a second of CPU)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from conditions import SEGMENT, UserProfile, parse_condition
from runtime.pacing import EVALUATIONS_PER_TURN
from services.segments.domain import CompiledSegment, Segment
from services.segments.handlers import judge
from tests.pacing import turns_during
from tests.segments.strategies import AS_OF

USERS, SEGMENTS = 1000, 3
PRO = {"v": 1, "attr": "plan", "op": "eq", "value": "pro"}


def segment() -> CompiledSegment:
    fields = Segment(uuid.uuid4(), "pro", "", PRO, (), AS_OF, AS_OF)
    return CompiledSegment.of(fields, parse_condition(PRO, "conditions", SEGMENT))


async def test_a_batch_of_verdicts_lets_other_tasks_run() -> None:
    segments = [segment() for _ in range(SEGMENTS)]
    profiles = {
        uuid.uuid4(): UserProfile({"plan": "pro"}, "Activation", AS_OF, AS_OF) for _ in range(USERS)
    }
    wanted = {user_id: segments for user_id in profiles}
    verdicts, turns = await turns_during(judge(wanted, profiles, AS_OF, timedelta(hours=1)))
    assert len(verdicts) == USERS * SEGMENTS and all(v.member for v in verdicts.values())
    # A turn at least every two batches of EVALUATIONS_PER_TURN: without pacing, none.
    assert turns >= USERS * SEGMENTS // (2 * EVALUATIONS_PER_TURN)
