"""Users: the list (by stage, a page at a time) with a search by email or id,
and a user's page: stage, attributes, stage history, segments, executions and
recent lifecycle events."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from console.web import render, services
from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.users.v1 import users_pb2
from lifecycle.workflows.v1 import workflows_pb2

PAGE_SIZE = 50
# How much of a user's related records their page shows (the newest first where the API orders so).
RECENT = 20
STAGES = {
    name.removeprefix("LIFECYCLE_STAGE_").lower(): value
    for name, value in stage_pb2.LifecycleStage.items()
    if value != stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED
}


def lookup(given: str) -> users_pb2.GetUserRequest:
    """GetUser by email when `given` looks like one, else by id."""
    if "@" in given:
        return users_pb2.GetUserRequest(email=given)
    return users_pb2.GetUserRequest(user_id=given)


async def user_list(request: Request) -> Response:
    found = request.query_params.get("q", "").strip()
    if found:
        user = (await services(request).users.GetUser(lookup(found))).user
        return RedirectResponse(f"/users/{user.id}", status_code=303)
    stage = request.query_params.get("stage", "")
    if stage and stage not in STAGES:
        raise HTTPException(400, f"There is no stage {stage!r}.")
    reply = await services(request).users.ListUsers(
        users_pb2.ListUsersRequest(
            page_size=PAGE_SIZE,
            page_token=request.query_params.get("page_token", ""),
            lifecycle_stages=[STAGES[stage]] if stage else [],
        )
    )
    return render(
        request,
        "users.html",
        users=reply.users,
        next_page_token=reply.next_page_token,
        stages=list(STAGES),
        stage=stage,
    )


async def _segments(request: Request, user_id: str) -> list[segments_pb2.Segment]:
    """The segments the user is a member of now, by name."""
    calls = services(request).segments
    memberships = await calls.ListUserSegments(
        segments_pb2.ListUserSegmentsRequest(user_id=user_id)
    )
    found = await asyncio.gather(
        *(
            calls.GetSegment(segments_pb2.GetSegmentRequest(segment_id=m.segment_id))
            for m in memberships.memberships
        )
    )
    return sorted((reply.segment for reply in found), key=lambda s: s.name)


async def user_page(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    calls = services(request)
    user = (await calls.users.GetUser(users_pb2.GetUserRequest(user_id=user_id))).user
    history, segments, executions, events = await asyncio.gather(
        calls.users.GetLifecycleHistory(
            users_pb2.GetLifecycleHistoryRequest(user_id=user.id, page_size=100)
        ),
        _segments(request, user.id),
        calls.workflows.ListExecutions(
            workflows_pb2.ListExecutionsRequest(user_id=user.id, page_size=RECENT)
        ),
        calls.metrics.ListEvents(metrics_pb2.ListEventsRequest(user_id=user.id, page_size=RECENT)),
    )
    return render(
        request,
        "user.html",
        user=user,
        transitions=history.transitions,
        segments=segments,
        executions=executions.executions,
        events=events.events,
    )


ROUTES = [Route("/users", user_list), Route("/users/{user_id}", user_page)]
