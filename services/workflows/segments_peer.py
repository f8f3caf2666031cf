"""The workflows service's call to the segments service: the members of a
campaign's segment, a page at a time (ListSegmentMembers), on behalf of whom
the campaign works for. Only the workflows service calls it, so the client
lives here rather than in clients/."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from runtime.clients import ServiceClients
from runtime.errors import Unavailable
from runtime.identity import acting_for, calling_as
from services.workflows.domain import PRODUCER

# What a segments service that is down, overloaded or too slow answers: try again later.
NOT_ANSWERED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class MembersPage:
    user_ids: list[uuid.UUID]
    # Empty on the last page.
    next_page_token: str


class SegmentsRefused(Exception):
    """The segments service refused the call: its code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"segments service: {code.name}: {details}")
        self.code = code


class SegmentsPeer:
    def __init__(self, clients: ServiceClients) -> None:
        self._clients = clients

    async def members(
        self, segment_id: uuid.UUID, page_size: int, page_token: str, actors: tuple[str, ...]
    ) -> MembersPage:
        """One page of the segment's members, in user id order. Unavailable when
        the segments service does not answer; SegmentsRefused for any refusal."""
        stub = segments_pb2_grpc.SegmentServiceStub(self._clients.channel("segments"))
        request = segments_pb2.ListSegmentMembersRequest(
            segment_id=str(segment_id), page_size=page_size, page_token=page_token
        )
        try:
            with calling_as(acting_for(PRODUCER, actors)):
                reply = await stub.ListSegmentMembers(request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            if error.code() in NOT_ANSWERED:
                raise Unavailable(
                    f"the segments service did not answer ListSegmentMembers"
                    f" ({error.code().name}); retry",
                    reason="SEGMENTS_UNAVAILABLE",
                ) from error
            raise SegmentsRefused(error.code(), error.details() or "") from error
        return MembersPage([uuid.UUID(m.user_id) for m in reply.memberships], reply.next_page_token)
