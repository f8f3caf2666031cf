"""A batch of events evaluated against many triggers lets other tasks run as
it goes (a thousand events against fifty triggers took a second of CPU)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from google.protobuf import struct_pb2

from conditions import Evaluator, UserProfile
from runtime.pacing import EVALUATIONS_PER_TURN
from services.triggers.domain import (
    Action,
    CompiledTrigger,
    Event,
    Reentry,
    TriggerSet,
    parse_trigger_condition,
)
from services.triggers.ingest import IngestPipeline
from tests.pacing import turns_during

NOW = datetime(2030, 1, 1, tzinfo=UTC)
EVENTS, TRIGGERS = 1000, 5


class Buyer:
    stage = "Activation"
    profile = UserProfile({"plan": "pro"}, "Activation", NOW, NOW)


def purchase(index: int) -> Event:
    data = {"amount": index % 300}
    struct = struct_pb2.Struct()
    struct.update(data)
    return Event(
        index,
        uuid.uuid4(),
        None,
        "purchase",
        data,
        struct,
        json.dumps(data),
        NOW,
        f"m{index}",
        user=Buyer(),
    )


def big_spender() -> CompiledTrigger:
    condition = parse_trigger_condition(
        {"v": 1, "attr": "amount", "op": "gt", "value": 100, "src": "event"}, "conditions"
    )
    assert condition is not None
    return CompiledTrigger(uuid.uuid4(), Action(uuid.uuid4()), Reentry(), Evaluator(condition))


async def test_a_batch_of_evaluations_lets_other_tasks_run() -> None:
    pipeline = IngestPipeline.__new__(IngestPipeline)
    triggers = TriggerSet(1, [("purchase", big_spender()) for _ in range(TRIGGERS)])
    events = [purchase(index) for index in range(EVENTS)]
    batch, turns = await turns_during(pipeline._evaluate(events, triggers, NOW))
    assert len(batch.evaluations.ids) == EVENTS * TRIGGERS
    # A turn at least every two batches of EVALUATIONS_PER_TURN (an event with its
    # triggers counts whole): without pacing, none.
    assert turns >= EVENTS * (1 + TRIGGERS) // (2 * EVALUATIONS_PER_TURN)
