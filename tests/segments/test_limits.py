"""Conditions at the limits of the language: an author's (100 nodes, depth 10)
for each segment, and, with the segments it references inlined, the limits of
what runs (1,000 nodes, depth 19). Their SQL stays small, they fit in a
request, and the users service answers them for the segments service
(MatchUserIds, CountUsers)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from conditions import (
    EXPANDED,
    SEGMENT,
    SegmentDefinition,
    compile_sql,
    parse_condition,
    resolve,
    size,
)
from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from runtime.stages import STAGES
from runtime.structs import dict_to_struct
from tests.segments.conftest import Suite

# Levels of `all` and `any` in a segment's chain; its last leaves are one deeper.
LEVELS = 9
# Segments the last one references beside its chain, each an `any` of 99 leaves.
WIDE = 8
# The wide ones, a chain, and the last: a chain that references the other chain
# from its next to last level (depth 9 + 10) and the wide ones from its first.
# Each has 100 nodes; inlined, the last has 1,000 nodes and depth 19.
SEGMENTS = WIDE + 2


def leaf(n: int) -> dict[str, Any]:
    """Leaves of every kind time changes, and the one a request nests deepest (a
    stage list): all true for a user created now whose a0..a9 are an hour old;
    windows false for one whose are a month old."""
    kinds: list[dict[str, Any]] = [
        {"attr": f"a{n % 10}", "op": "within_last", "value": "P7D"},
        {"attr": f"a{n % 10}", "op": "within_last", "value": "P7D"},
        {"stage_age": {"op": "lt", "value": "P3650D"}},
        {"created_at": {"op": "within_last", "value": "P1D"}},
        {"attr": "gone", "op": "not_within_last", "value": "P1D"},
        {"stage": {"op": "in", "value": list(STAGES)}},
    ]
    return kinds[n % len(kinds)]


def chain(leaves: int, beside: Mapping[int, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """`all` and `any` in turn, LEVELS deep, `leaves` leaves spread over the levels
    and `beside[level]` at a level: the worst shape for the SQL of flips, each
    level combining the one below."""
    counts = [leaves // LEVELS + (level < leaves % LEVELS) for level in range(LEVELS)]
    node: list[dict[str, Any]] = []
    for level in reversed(range(LEVELS)):
        children = [*beside.get(level, ()), *(leaf(n) for n in range(counts[level])), *node]
        node = [{"all" if level % 2 == 0 else "any": children}]
    return {"v": 1, **node[0]}


def segment_condition(n: int, tag: str, earlier: Sequence[str]) -> dict[str, Any]:
    """The condition of the n-th segment, given the ids of those before it."""
    if n < WIDE:
        return {"v": 1, "any": [leaf(k) for k in range(99)]}
    if n == WIDE:
        return chain(91, {})
    top = [{"attr": "run", "op": "eq", "value": tag}]
    top += [{"in_segment": segment_id} for segment_id in earlier[:WIDE]]
    return chain(90 - len(top), {0: top, LEVELS - 2: [{"in_segment": earlier[WIDE]}]})


def test_a_condition_at_the_limits_fits_in_a_request_and_its_sql_stays_small() -> None:
    ids: list[str] = []
    definitions = {}
    for n in range(SEGMENTS):
        ids.append(str(uuid.uuid4()))
        condition = parse_condition(segment_condition(n, "run", ids[:-1]), "conditions", SEGMENT)
        assert size(condition)[0] == 100
        definitions[uuid.UUID(ids[-1])] = SegmentDefinition((), condition)
    last = uuid.UUID(ids[-1])
    inlined = resolve(definitions[last].condition, definitions, (last,))
    assert size(inlined) == (EXPANDED.max_nodes, EXPANDED.max_depth)
    # Protobuf decoders refuse more than 100 nested messages: a Struct nests five
    # for each level of all and any, eight for a stage list.
    request = users_pb2.MatchUserIdsRequest(condition=dict_to_struct(inlined.expanded_json()))
    assert users_pb2.MatchUserIdsRequest.FromString(request.SerializeToString()) == request
    compiled = compile_sql(inlined, datetime.now(UTC))
    assert compiled.flip is not None
    text = [compiled.where, compiled.timed or "", compiled.flip, *compiled.joins]
    # About 300 bytes a node (the SQL of flips used to double with each level:
    # more than a gigabyte at depth 20).
    assert sum(map(len, text)) < 400_000


async def test_the_users_service_answers_a_segment_at_the_limits(suite: Suite) -> None:
    tag = uuid.uuid4().hex
    now = suite.clock.now()

    def stamped(age: timedelta) -> dict[str, Any]:
        moment = (now - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"run": tag, **{f"a{n}": moment for n in range(10)}}

    fresh = await suite.create_user(stamped(timedelta(hours=1)))
    stale = await suite.create_user(stamped(timedelta(days=30)))
    await suite.settle()
    ids: list[str] = []
    try:
        for n in range(SEGMENTS):
            ids.append((await suite.create_segment(segment_condition(n, tag, ids))).id)
        last = ids[-1]
        refreshed = await suite.refresh(last)
        assert (refreshed.entered_count, refreshed.member_count) == (1, 1)
        assert await suite.members(last) == {fresh.id}
        conditions = dict_to_struct(segment_condition(SEGMENTS - 1, tag, ids))
        preview = await suite.segments.PreviewSegment(
            segments_pb2.PreviewSegmentRequest(conditions=conditions)
        )
        assert (preview.estimated_size, list(preview.sample_user_ids)) == (1, [fresh.id])
        # The Python evaluator agrees about the user who is not a member.
        checked = await suite.segments.CheckMembership(
            segments_pb2.CheckMembershipRequest(user_id=stale.id, segment_id=last)
        )
        assert (checked.is_member, checked.cached) == (False, False)
    finally:
        # Referrers first. Left behind, they would cost other tests' schedulers
        # refreshes of every user.
        for segment_id in reversed(ids):
            await suite.segments.DeleteSegment(
                segments_pb2.DeleteSegmentRequest(segment_id=segment_id)
            )
