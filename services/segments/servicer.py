"""gRPC entry point of the segments service: validate, call the use case, map back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
from google.protobuf import struct_pb2

from conditions import MISSING, SEGMENT, Condition, LeafOutcome, parse_condition
from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from runtime.errors import InvalidArgument, Violations
from runtime.idempotency import request_key
from runtime.pagination import PageTokens, parse_time_and_id, time_and_id
from runtime.parsing import check_name, parse_date_range, parse_stages, parse_uuid
from runtime.stages import stage_value
from runtime.structs import dict_to_struct, json_object, set_timestamp, timestamp
from services.segments.domain import (
    Membership,
    Segment,
    SegmentFields,
    SegmentSize,
    UserChange,
    check_description,
)
from services.segments.handlers import Memberships, SegmentDirectory

Context = grpc.aio.ServicerContext[Any, Any]
UPDATABLE = ("name", "description", "conditions", "lifecycle_stages")
DEFAULT_SAMPLE = 10
MAX_SAMPLE = 100
MAX_REEVALUATED_USERS = 100_000
# The longest range of ListSegmentSizes: a year of points, leap day included.
MAX_SIZE_DAYS = 366


def segment_message(segment: Segment) -> segments_pb2.Segment:
    message = segments_pb2.Segment(
        id=str(segment.id),
        name=segment.name,
        description=segment.description,
        conditions=dict_to_struct(segment.conditions),
        lifecycle_stages=[stage_value(stage) for stage in segment.stages],
        create_time=timestamp(segment.created_at),
        update_time=timestamp(segment.updated_at),
        member_count=segment.member_count,
    )
    if segment.evaluated_at is not None:
        set_timestamp(message.evaluate_time, segment.evaluated_at)
    return message


def membership_message(membership: Membership) -> segments_pb2.Membership:
    message = segments_pb2.Membership(
        user_id=str(membership.user_id),
        segment_id=str(membership.segment_id),
        evaluate_time=timestamp(membership.evaluated_at),
    )
    if membership.valid_until is not None:
        set_timestamp(message.valid_until, membership.valid_until)
    return message


def size_message(size: SegmentSize) -> segments_pb2.SegmentSize:
    return segments_pb2.SegmentSize(
        date=size.day.isoformat(),
        member_count=size.members,
        record_time=timestamp(size.recorded_at),
    )


def leaf_message(outcome: LeafOutcome) -> segments_pb2.LeafExplanation:
    message = segments_pb2.LeafExplanation(
        path=outcome.location, condition=dict_to_struct(dict(outcome.leaf)), held=outcome.held
    )
    if outcome.actual is not MISSING:
        holder = struct_pb2.Struct()
        # Exact decimals become doubles: a Value holds nothing else.
        holder.update({"value": json.loads(json.dumps(outcome.actual, default=float))})
        message.actual_value.CopyFrom(holder.fields["value"])
    return message


def _condition(
    message: Any, name: str, field: str, violations: Violations
) -> tuple[dict[str, Any], Condition | None]:
    """A condition field, parsed; its problems join the request's other violations."""
    if not message.HasField(name):
        violations.add(field, "is required")
        return {}, None
    data = json_object(getattr(message, name), field, violations)
    if data is None:
        return {}, None
    try:
        return data, parse_condition(data, field, SEGMENT)
    except InvalidArgument as error:
        violations.items += error.violations
        return data, None


def _segment_fields(
    segment: segments_pb2.Segment, paths: set[str], violations: Violations
) -> SegmentFields:
    conditions, condition = (
        _condition(segment, "conditions", "segment.conditions", violations)
        if "conditions" in paths
        else (None, None)
    )
    stages = None
    if "lifecycle_stages" in paths:
        field = "segment.lifecycle_stages"
        stages = tuple(sorted(set(parse_stages(list(segment.lifecycle_stages), field, violations))))
    return SegmentFields(
        name=check_name(segment.name, "segment.name", violations) if "name" in paths else None,
        description=check_description(segment.description, "segment.description", violations)
        if "description" in paths
        else None,
        conditions=conditions,
        condition=condition,
        stages=stages,
    )


def _required_id(value: str, field: str, violations: Violations) -> uuid.UUID:
    """A required UUID field; a placeholder stands in when it is bad (violations fail the call)."""
    parsed = parse_uuid(value, field, violations)
    return parsed or uuid.UUID(int=0)


class SegmentServicer(segments_pb2_grpc.SegmentServiceServicer):
    def __init__(
        self, directory: SegmentDirectory, memberships: Memberships, page_tokens: PageTokens
    ) -> None:
        self._directory = directory
        self._memberships = memberships
        self._tokens = page_tokens

    async def CreateSegment(
        self, request: segments_pb2.CreateSegmentRequest, context: Context
    ) -> segments_pb2.CreateSegmentResponse:
        if not request.HasField("segment"):
            raise InvalidArgument.field("segment", "is required")
        violations = Violations()
        fields = _segment_fields(request.segment, set(UPDATABLE), violations)
        key = request_key(request, "CreateSegment", violations)
        violations.check()
        segment = await self._directory.create(fields, key)
        return segments_pb2.CreateSegmentResponse(segment=segment_message(segment))

    async def GetSegment(
        self, request: segments_pb2.GetSegmentRequest, context: Context
    ) -> segments_pb2.GetSegmentResponse:
        violations = Violations()
        segment_id = _required_id(request.segment_id, "segment_id", violations)
        violations.check()
        segment = await self._directory.get(segment_id)
        return segments_pb2.GetSegmentResponse(segment=segment_message(segment))

    async def ListSegments(
        self, request: segments_pb2.ListSegmentsRequest, context: Context
    ) -> segments_pb2.ListSegmentsResponse:
        violations = Violations()
        stages = sorted(
            parse_stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
        )
        violations.check()
        segments, next_token = await self._tokens.read_page(
            request,
            stages,
            lambda cursor, limit: self._directory.list_page(stages, cursor, limit),
            lambda s: time_and_id(s.created_at, s.id),
            parse_time_and_id,
        )
        return segments_pb2.ListSegmentsResponse(
            segments=[segment_message(s) for s in segments], next_page_token=next_token
        )

    async def UpdateSegment(
        self, request: segments_pb2.UpdateSegmentRequest, context: Context
    ) -> segments_pb2.UpdateSegmentResponse:
        violations = Violations()
        segment_id = _required_id(request.segment.id, "segment.id", violations)
        paths = self._update_paths(request)
        fields = _segment_fields(request.segment, paths, violations)
        violations.check()
        segment = await self._directory.update(segment_id, fields)
        return segments_pb2.UpdateSegmentResponse(segment=segment_message(segment))

    @staticmethod
    def _update_paths(request: segments_pb2.UpdateSegmentRequest) -> set[str]:
        segment = request.segment
        if not request.HasField("update_mask"):
            present = {
                "name": bool(segment.name),
                "description": bool(segment.description),
                "conditions": segment.HasField("conditions"),
                "lifecycle_stages": bool(segment.lifecycle_stages),
            }
            return {path for path, given in present.items() if given}
        paths = set(request.update_mask.paths)
        if "*" in paths:
            return set(UPDATABLE)
        for path in paths - set(UPDATABLE):
            raise InvalidArgument.field("update_mask", f"{path!r} cannot be updated")
        if not paths:
            raise InvalidArgument.field("update_mask", "names no field")
        return paths

    async def DeleteSegment(
        self, request: segments_pb2.DeleteSegmentRequest, context: Context
    ) -> segments_pb2.DeleteSegmentResponse:
        violations = Violations()
        segment_id = _required_id(request.segment_id, "segment_id", violations)
        violations.check()
        await self._directory.delete(segment_id)
        return segments_pb2.DeleteSegmentResponse()

    async def PreviewSegment(
        self, request: segments_pb2.PreviewSegmentRequest, context: Context
    ) -> segments_pb2.PreviewSegmentResponse:
        violations = Violations()
        _, condition = _condition(request, "conditions", "conditions", violations)
        stages = sorted(
            parse_stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
        )
        if not 0 <= request.sample_size <= MAX_SAMPLE:
            violations.add("sample_size", f"must be between 0 and {MAX_SAMPLE}")
        violations.check()
        assert condition is not None
        preview = await self._directory.preview(
            condition, stages, request.sample_size or DEFAULT_SAMPLE
        )
        return segments_pb2.PreviewSegmentResponse(
            estimated_size=preview.size, sample_user_ids=[str(u) for u in preview.sample]
        )

    async def RefreshSegment(
        self, request: segments_pb2.RefreshSegmentRequest, context: Context
    ) -> segments_pb2.RefreshSegmentResponse:
        violations = Violations()
        segment_id = _required_id(request.segment_id, "segment_id", violations)
        violations.check()
        outcome = await self._memberships.refresh(segment_id)
        assert outcome is not None
        return segments_pb2.RefreshSegmentResponse(
            entered_count=outcome.entered,
            exited_count=outcome.exited,
            member_count=outcome.members,
            evaluate_time=timestamp(outcome.evaluated_at),
        )

    def _pair(self, user_id: str, segment_id: str) -> tuple[uuid.UUID, uuid.UUID]:
        violations = Violations()
        user = _required_id(user_id, "user_id", violations)
        segment = _required_id(segment_id, "segment_id", violations)
        violations.check()
        return user, segment

    async def CheckMembership(
        self, request: segments_pb2.CheckMembershipRequest, context: Context
    ) -> segments_pb2.CheckMembershipResponse:
        outcome = await self._memberships.check(*self._pair(request.user_id, request.segment_id))
        response = segments_pb2.CheckMembershipResponse(
            is_member=outcome.member,
            evaluate_time=timestamp(outcome.evaluated_at),
            cached=outcome.cached,
        )
        if outcome.valid_until is not None:
            set_timestamp(response.valid_until, outcome.valid_until)
        return response

    async def ListSegmentMembers(
        self, request: segments_pb2.ListSegmentMembersRequest, context: Context
    ) -> segments_pb2.ListSegmentMembersResponse:
        violations = Violations()
        segment_id = _required_id(request.segment_id, "segment_id", violations)
        violations.check()
        members, next_token = await self._tokens.read_page(
            request,
            [str(segment_id)],
            lambda after, limit: self._memberships.members(segment_id, after, limit),
            lambda m: [str(m.user_id)],
            lambda cursor: uuid.UUID(cursor[0]),
        )
        return segments_pb2.ListSegmentMembersResponse(
            memberships=[membership_message(m) for m in members], next_page_token=next_token
        )

    async def ListSegmentSizes(
        self, request: segments_pb2.ListSegmentSizesRequest, context: Context
    ) -> segments_pb2.ListSegmentSizesResponse:
        violations = Violations()
        segment_id = _required_id(request.segment_id, "segment_id", violations)
        days = parse_date_range(
            request.start_date, request.end_date, violations, max_days=MAX_SIZE_DAYS
        )
        violations.check()
        assert days is not None
        sizes = await self._memberships.sizes(segment_id, *days)
        return segments_pb2.ListSegmentSizesResponse(sizes=[size_message(s) for s in sizes])

    async def ListUserSegments(
        self, request: segments_pb2.ListUserSegmentsRequest, context: Context
    ) -> segments_pb2.ListUserSegmentsResponse:
        violations = Violations()
        user_id = _required_id(request.user_id, "user_id", violations)
        violations.check()
        memberships = await self._memberships.of_user(user_id)
        return segments_pb2.ListUserSegmentsResponse(
            memberships=[membership_message(m) for m in memberships]
        )

    async def ExplainMembership(
        self, request: segments_pb2.ExplainMembershipRequest, context: Context
    ) -> segments_pb2.ExplainMembershipResponse:
        explanation = await self._memberships.explain(
            *self._pair(request.user_id, request.segment_id)
        )
        return segments_pb2.ExplainMembershipResponse(
            is_member=explanation.member,
            stage_matched=explanation.stage_matched,
            leaves=[leaf_message(leaf) for leaf in explanation.leaves],
            valid_until=timestamp(explanation.valid_until),
        )

    async def ReevaluateUsers(
        self, request: segments_pb2.ReevaluateUsersRequest, context: Context
    ) -> segments_pb2.ReevaluateUsersResponse:
        violations = Violations()
        if len(request.user_ids) + len(request.changes) > MAX_REEVALUATED_USERS:
            raise InvalidArgument.field(
                "changes", f"at most {MAX_REEVALUATED_USERS} users per request"
            )
        changes = [
            UserChange(_required_id(value, f"user_ids[{i}]", violations), everything=True)
            for i, value in enumerate(request.user_ids)
        ]
        changes += [
            UserChange(
                _required_id(change.user_id, f"changes[{i}].user_id", violations),
                frozenset(change.attribute_keys),
                change.stage_changed,
                change.created,
                frozenset(change.event_types),
            )
            for i, change in enumerate(request.changes)
        ]
        violations.check()
        entered, exited = await self._memberships.reevaluate(changes)
        return segments_pb2.ReevaluateUsersResponse(entered_count=entered, exited_count=exited)

    async def EraseUserData(
        self, request: segments_pb2.EraseUserDataRequest, context: Context
    ) -> segments_pb2.EraseUserDataResponse:
        violations = Violations()
        user_id = _required_id(request.user_id, "user_id", violations)
        violations.check()
        return segments_pb2.EraseUserDataResponse(
            erased_count=await self._memberships.erase(user_id)
        )
