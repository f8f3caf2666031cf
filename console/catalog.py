"""Segments and triggers: their lists, a segment's page (its condition as
sentences, its size over the last 30 days (drawn by static/overview.js from
its sizes.json), its members a page at a time, and why a user is or is not a
member: ExplainMembership) and a trigger's (its condition, action and
recent evaluations, with why a firing started nothing)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.calls import CallProblem, call_problem
from console.conditions_text import Names, Phrase, describe, segment_ids
from console.users import lookup
from console.web import render, services
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from runtime.pagination import MAX_PAGE_SIZE

PAGE_SIZE = 50
# The days a segment's page charts its size over, today included.
SIZE_DAYS = 30


def _page_token(request: Request) -> str:
    return request.query_params.get("page_token", "")


async def segment_list(request: Request) -> Response:
    reply = await services(request).segments.ListSegments(
        segments_pb2.ListSegmentsRequest(page_size=PAGE_SIZE, page_token=_page_token(request))
    )
    return render(
        request, "segments.html", segments=reply.segments, next_page_token=reply.next_page_token
    )


@dataclass(frozen=True)
class Leaf:
    """One leaf of an explanation, written out: where it sits, what it says,
    the value it read and whether it held."""

    path: str
    phrase: Phrase
    read: str
    held: bool


def _read(leaf: segments_pb2.LeafExplanation) -> str:
    """The value a leaf read (an event leaf's count or time) as JSON, whole
    numbers without a decimal point; "missing" when there was none."""
    if not leaf.HasField("actual_value"):
        return "missing"
    value = json_format.MessageToDict(leaf.actual_value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Explanation:
    """ExplainMembership's answer for the user the form named."""

    user_id: str
    reply: segments_pb2.ExplainMembershipResponse
    leaves: list[Leaf]


def explain(user_id: str, reply: segments_pb2.ExplainMembershipResponse) -> Explanation:
    leaves = [
        Leaf(leaf.path, describe(json_format.MessageToDict(leaf.condition)), _read(leaf), leaf.held)
        for leaf in reply.leaves
    ]
    return Explanation(user_id, reply, leaves)


async def _explain(
    request: Request, segment_id: str, given: str
) -> Explanation | CallProblem | None:
    """ExplainMembership for a user given by id or email; a failed call as its problem."""
    if not given:
        return None
    calls = services(request)
    try:
        user_id = given
        if "@" in given:
            user_id = (await calls.users.GetUser(lookup(given))).user.id
        reply = await calls.segments.ExplainMembership(
            segments_pb2.ExplainMembershipRequest(user_id=user_id, segment_id=segment_id)
        )
        return explain(user_id, reply)
    except grpc.aio.AioRpcError as error:
        return call_problem(error)


async def _segment_names(request: Request, condition: dict[str, object]) -> Names:
    """The names of the segments the condition's in_segment leaves name, in one
    ListSegments call (there is no BatchGetSegments), none without such leaves.
    A segment beyond its largest page is shown by its id."""
    if not segment_ids(condition):
        return {}
    listed = await services(request).segments.ListSegments(
        segments_pb2.ListSegmentsRequest(page_size=MAX_PAGE_SIZE)
    )
    return {segment.id: segment.name for segment in listed.segments}


async def segment_page(request: Request) -> Response:
    segment_id = request.path_params["segment_id"]
    given = request.query_params.get("explain", "").strip()
    calls = services(request).segments
    found, members, explained = await asyncio.gather(
        calls.GetSegment(segments_pb2.GetSegmentRequest(segment_id=segment_id)),
        calls.ListSegmentMembers(
            segments_pb2.ListSegmentMembersRequest(
                segment_id=segment_id, page_size=PAGE_SIZE, page_token=_page_token(request)
            )
        ),
        _explain(request, segment_id, given),
    )
    condition = json_format.MessageToDict(found.segment.conditions)
    return render(
        request,
        "segment.html",
        segment=found.segment,
        condition=describe(condition, await _segment_names(request, condition)),
        members=members.memberships,
        next_page_token=members.next_page_token,
        given=given,
        problem=explained if isinstance(explained, CallProblem) else None,
        explanation=explained if isinstance(explained, Explanation) else None,
    )


async def segment_sizes(request: Request) -> Response:
    """The segment's members on each of the last 30 days it existed, in the
    shape the charts script reads: the days, and the one line of the chart."""
    today = datetime.now(UTC).date()
    reply = await services(request).segments.ListSegmentSizes(
        segments_pb2.ListSegmentSizesRequest(
            segment_id=request.path_params["segment_id"],
            start_date=(today - timedelta(days=SIZE_DAYS - 1)).isoformat(),
            end_date=today.isoformat(),
        )
    )
    line = {size.date: size.member_count for size in reply.sizes}
    return JSONResponse({"days": list(line), "charts": {"size": {"members": line} if line else {}}})


async def trigger_list(request: Request) -> Response:
    reply = await services(request).triggers.ListTriggers(
        triggers_pb2.ListTriggersRequest(page_size=PAGE_SIZE, page_token=_page_token(request))
    )
    return render(
        request, "triggers.html", triggers=reply.triggers, next_page_token=reply.next_page_token
    )


async def trigger_page(request: Request) -> Response:
    trigger_id = request.path_params["trigger_id"]
    calls = services(request).triggers
    found = await calls.GetTrigger(triggers_pb2.GetTriggerRequest(trigger_id=trigger_id))
    evaluations = await calls.ListTriggerExecutions(
        triggers_pb2.ListTriggerExecutionsRequest(
            trigger_id=trigger_id, page_size=PAGE_SIZE, page_token=_page_token(request)
        )
    )
    return render(
        request,
        "trigger.html",
        trigger=found.trigger,
        evaluations=evaluations.trigger_executions,
        next_page_token=evaluations.next_page_token,
    )


ROUTES = [
    Route("/segments", segment_list),
    Route("/segments/{segment_id}", segment_page),
    Route("/segments/{segment_id}/sizes.json", segment_sizes),
    Route("/triggers", trigger_list),
    Route("/triggers/{trigger_id}", trigger_page),
]
