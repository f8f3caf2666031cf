"""What the segments service asks the users service, which owns the users and
runs conditions as SQL where they are (MatchUserIds, CountUsers) and gives the
Python evaluator its input (BatchGetUserProfiles)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import grpc
from google.protobuf import timestamp_pb2

from conditions import UserProfile
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clients import ServiceClients
from runtime.deadlines import timeout_for_call
from runtime.errors import ResourceExhausted, Unavailable
from runtime.stages import stage_name, stage_value
from runtime.structs import JsonObject, dict_to_struct, set_timestamp

PROFILES_PER_CALL = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _failed(error: grpc.aio.AioRpcError) -> NoReturn:
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise Unavailable(
            f"the users service did not answer ({code.name}); retry", reason="USERS_UNAVAILABLE"
        ) from error
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise ResourceExhausted(error.details() or "", reason="CONDITION_TIMEOUT") from error
    raise error


def profile_of(message: users_pb2.UserProfile) -> UserProfile:
    stage = stage_name(message.lifecycle_stage)
    assert stage is not None, "the users service sent a profile without a stage"
    return UserProfile(
        attributes=json.loads(message.attributes_json, parse_float=Decimal),
        stage=stage,
        created_at=_moment(message.create_time),
        stage_entered_at=_moment(message.stage_enter_time)
        if message.HasField("stage_enter_time")
        else None,
    )


@dataclass(frozen=True)
class UserMatches:
    # The matching users' ids in ascending order over a stream, as text, and for
    # each, when time alone may end their match, in microseconds since the Unix
    # epoch (0: never): as the users service sends them, for SQL to read.
    user_ids: list[str]
    valid_until: list[int]
    # When a user who does not match may start to by time alone, if asked and any:
    # the earliest over a stream's messages.
    next_entry: datetime | None


class UsersClient:
    def __init__(self, clients: ServiceClients, match_timeout: float) -> None:
        self._clients = clients
        self._match_timeout = match_timeout

    def _stub(self) -> users_pb2_grpc.UserServiceAsyncStub:
        return users_pb2_grpc.UserServiceStub(self._clients.channel("users"))

    def _filter(
        self, condition: JsonObject, stages: Sequence[str], as_of: datetime
    ) -> dict[str, Any]:
        filters: dict[str, Any] = {
            "condition": dict_to_struct(condition),
            "lifecycle_stages": [stage_value(stage) for stage in stages],
        }
        filters["as_of"] = timestamp_pb2.Timestamp()
        set_timestamp(filters["as_of"], as_of)
        return filters

    async def match(
        self,
        condition: JsonObject,
        stages: Sequence[str],
        as_of: datetime,
        *,
        limit: int = 0,
        next_entry: bool = False,
    ) -> AsyncIterator[UserMatches]:
        """The matching users in batches; with `next_entry`, when the next user may enter."""
        request = users_pb2.MatchUserIdsRequest(
            limit=limit,
            include_next_entry=next_entry,
            **self._filter(condition, stages, as_of),
        )
        stream = self._stub().MatchUserIds(request, timeout=timeout_for_call(self._match_timeout))
        try:
            async for response in stream:
                yield UserMatches(
                    list(response.user_ids),
                    list(response.valid_until_micros),
                    _moment(response.next_entry_time)
                    if response.HasField("next_entry_time")
                    else None,
                )
        except grpc.aio.AioRpcError as error:
            _failed(error)

    async def count(self, condition: JsonObject, stages: Sequence[str], as_of: datetime) -> int:
        request = users_pb2.CountUsersRequest(**self._filter(condition, stages, as_of))
        try:
            response = await self._stub().CountUsers(
                request, timeout=timeout_for_call(self._match_timeout)
            )
        except grpc.aio.AioRpcError as error:
            _failed(error)
        return response.count

    async def profiles(self, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, UserProfile]:
        """The profiles of the users that exist."""
        found: dict[uuid.UUID, UserProfile] = {}
        for start in range(0, len(user_ids), PROFILES_PER_CALL):
            chunk = user_ids[start : start + PROFILES_PER_CALL]
            request = users_pb2.BatchGetUserProfilesRequest(user_ids=[str(u) for u in chunk])
            try:
                response = await self._stub().BatchGetUserProfiles(
                    request, timeout=self._clients.timeout()
                )
            except grpc.aio.AioRpcError as error:
                _failed(error)
            for message in response.profiles:
                found[uuid.UUID(message.user_id)] = profile_of(message)
        return found
