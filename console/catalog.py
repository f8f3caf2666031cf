"""Segments and triggers: their lists, a segment's page (its condition and
its members, a page at a time) and a trigger's (its condition, action and
recent evaluations, with why a firing started nothing)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.web import render, services
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2

PAGE_SIZE = 50


def _page_token(request: Request) -> str:
    return request.query_params.get("page_token", "")


async def segment_list(request: Request) -> Response:
    reply = await services(request).segments.ListSegments(
        segments_pb2.ListSegmentsRequest(page_size=PAGE_SIZE, page_token=_page_token(request))
    )
    return render(
        request, "segments.html", segments=reply.segments, next_page_token=reply.next_page_token
    )


async def segment_page(request: Request) -> Response:
    segment_id = request.path_params["segment_id"]
    calls = services(request).segments
    found = await calls.GetSegment(segments_pb2.GetSegmentRequest(segment_id=segment_id))
    members = await calls.ListSegmentMembers(
        segments_pb2.ListSegmentMembersRequest(
            segment_id=segment_id, page_size=PAGE_SIZE, page_token=_page_token(request)
        )
    )
    return render(
        request,
        "segment.html",
        segment=found.segment,
        members=members.memberships,
        next_page_token=members.next_page_token,
    )


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
    Route("/triggers", trigger_list),
    Route("/triggers/{trigger_id}", trigger_page),
]
