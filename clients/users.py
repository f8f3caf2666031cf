"""The users service, as the other services call it: one typed client over its
protobuf contract. Reads come back as domain values (profiles a condition
reads, user ids, matches). A users service that does not answer becomes
UNAVAILABLE (USERS_UNAVAILABLE, retry) and a condition that ran too long
RESOURCE_EXHAUSTED (CONDITION_TIMEOUT), so every service answers its own
clients alike when the users service cannot; any other refusal is a fault of
the suite and stays an error the server reports as INTERNAL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import timestamp_pb2

from conditions import EventReads, PersonEvent, UserProfile
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clients import ServiceClients
from runtime.deadlines import timeout_for_call
from runtime.errors import ResourceExhausted, Unavailable, reason_of
from runtime.stages import stage_name, stage_value
from runtime.structs import (
    DECIMAL_JSON,
    JsonObject,
    dict_to_struct,
    set_timestamp,
    struct_to_dict,
)

# Users a BatchGetUserProfiles asks for at most (the users service's limit).
PROFILES_PER_CALL = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_EVENTS = EventReads()

# A call of the users service, given its stub and timeout.
_Call = Callable[["users_pb2_grpc.UserServiceAsyncStub", float], Awaitable[Any]]


def _moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


class KnownUser:
    """A user the users service answered for: the stage at once, the profile a
    condition reads only when one reads it (most events concern no condition)."""

    __slots__ = ("_message", "_profile", "stage")

    def __init__(self, message: users_pb2.UserProfile) -> None:
        stage = stage_name(message.lifecycle_stage)
        assert stage is not None, "the users service sent a profile without a stage"
        self.stage = stage
        self._message = message
        self._profile: UserProfile | None = None

    @property
    def profile(self) -> UserProfile:
        if self._profile is None:
            message = self._message
            self._profile = UserProfile(
                attributes=DECIMAL_JSON.decode(message.attributes_json),
                stage=self.stage,
                created_at=_moment(message.create_time),
                stage_entered_at=_moment(message.stage_enter_time)
                if message.HasField("stage_enter_time")
                else None,
                events=tuple(
                    PersonEvent(
                        event.event_type,
                        _moment(event.occur_time),
                        DECIMAL_JSON.decode(event.data_json),
                    )
                    for event in message.events
                ),
            )
        return self._profile


@dataclass(frozen=True)
class UserSnapshot:
    """A user as an expression reads them (`user.id`, `user.stage`, `user.attributes`)."""

    id: str
    stage: str | None
    attributes: JsonObject

    def as_variables(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "attributes": self.attributes}


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


class UsersRefused(Exception):
    """The users service answered a write with an error: its code, the reason of
    its ErrorInfo (empty when none) and its message."""

    def __init__(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        super().__init__(f"users service: {code.name}: {details}")
        self.code = code
        self.reason = reason

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> UsersRefused:
        return cls(error.code(), reason_of(error), error.details() or "")


# The calls that run a condition as SQL: RESOURCE_EXHAUSTED is the condition's timeout.
_CONDITION_CALLS = frozenset({"MatchUserIds", "CountUsers"})
# What a users service that is down, overloaded or too slow answers: try again later.
_NOT_ANSWERED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def _failed(call: str, error: grpc.aio.AioRpcError) -> NoReturn:
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and call in _CONDITION_CALLS:
        raise ResourceExhausted(error.details() or "", reason="CONDITION_TIMEOUT") from error
    if code in _NOT_ANSWERED:
        raise Unavailable(
            f"the users service did not answer {call} ({code.name}); retry",
            reason="USERS_UNAVAILABLE",
        ) from error
    # Any other answer is a fault of the suite (a refused identity, a request the
    # caller should not have built): INTERNAL for the caller's client, with a trace id.
    raise error


def _filter(condition: JsonObject, stages: Sequence[str], as_of: datetime) -> dict[str, Any]:
    moment = timestamp_pb2.Timestamp()
    set_timestamp(moment, as_of)
    return {
        "condition": dict_to_struct(condition),
        "lifecycle_stages": [stage_value(stage) for stage in stages],
        "as_of": moment,
    }


class UsersClient:
    """Calls with the suite's channels and deadlines; `match_timeout` bounds the
    conditions the users service runs as SQL (MatchUserIds, CountUsers)."""

    def __init__(self, clients: ServiceClients, match_timeout: float | None = None) -> None:
        self._clients = clients
        self._match_timeout = match_timeout

    def _stub(self) -> users_pb2_grpc.UserServiceAsyncStub:
        return users_pb2_grpc.UserServiceStub(self._clients.channel("users"))

    def _match_deadline(self) -> float:
        if self._match_timeout is None:
            return self._clients.timeout()
        return timeout_for_call(self._match_timeout)

    async def user(self, user_id: uuid.UUID) -> UserSnapshot | None:
        """The user's stage and attributes (GetUser); None when there is no such user."""
        try:
            reply = await self._stub().GetUser(
                users_pb2.GetUserRequest(user_id=str(user_id)), timeout=self._clients.timeout()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            _failed("GetUser", error)
        return UserSnapshot(
            reply.user.id,
            stage_name(reply.user.lifecycle_stage),
            struct_to_dict(reply.user.attributes),
        )

    async def profiles(
        self, user_ids: Iterable[uuid.UUID], events: EventReads = _NO_EVENTS
    ) -> dict[uuid.UUID, KnownUser]:
        """Those of the users that exist, asked for in calls of PROFILES_PER_CALL at
        once, each with the tracked events `events` asks for."""
        wanted = list(user_ids)
        chunks = [
            wanted[start : start + PROFILES_PER_CALL]
            for start in range(0, len(wanted), PROFILES_PER_CALL)
        ]
        replies = await asyncio.gather(*(self._profiles(chunk, events) for chunk in chunks))
        return {
            uuid.UUID(message.user_id): KnownUser(message)
            for reply in replies
            for message in reply.profiles
        }

    async def _profiles(
        self, user_ids: Sequence[uuid.UUID], events: EventReads
    ) -> users_pb2.BatchGetUserProfilesResponse:
        request = users_pb2.BatchGetUserProfilesRequest(
            user_ids=[str(u) for u in user_ids], event_types=events.types
        )
        if events.since is not None:
            set_timestamp(request.events_since, events.since)
        try:
            return await self._stub().BatchGetUserProfiles(request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            _failed("BatchGetUserProfiles", error)

    async def ids_by_email(self, emails: Iterable[str]) -> dict[str, uuid.UUID]:
        """The ids of the users with these emails (compared case-insensitively, as
        the users service does), keyed by the lowercased email, for those that exist."""
        distinct = sorted({email.lower() for email in emails})
        found = await asyncio.gather(*(self._id_by_email(email) for email in distinct))
        return {email: user_id for email, user_id in zip(distinct, found, strict=True) if user_id}

    async def _id_by_email(self, email: str) -> uuid.UUID | None:
        try:
            reply = await self._stub().GetUser(
                users_pb2.GetUserRequest(email=email), timeout=self._clients.timeout()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            _failed("GetUser", error)
        return uuid.UUID(reply.user.id)

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
            limit=limit, include_next_entry=next_entry, **_filter(condition, stages, as_of)
        )
        stream = self._stub().MatchUserIds(request, timeout=self._match_deadline())
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
            _failed("MatchUserIds", error)

    async def count(self, condition: JsonObject, stages: Sequence[str], as_of: datetime) -> int:
        request = users_pb2.CountUsersRequest(**_filter(condition, stages, as_of))
        try:
            response = await self._stub().CountUsers(request, timeout=self._match_deadline())
        except grpc.aio.AioRpcError as error:
            _failed("CountUsers", error)
        return response.count

    async def transition_stage(
        self,
        user_id: uuid.UUID,
        stage: str,
        *,
        request_id: uuid.UUID,
        execution_id: uuid.UUID,
        metadata: JsonObject,
    ) -> None:
        """TransitionStage; UsersRefused with what the users service answered."""
        request = users_pb2.TransitionStageRequest(
            user_id=str(user_id),
            to_stage=stage_value(stage),
            workflow_execution_id=str(execution_id),
            metadata=dict_to_struct(metadata),
            request_id=str(request_id),
        )
        await self._write(lambda stub, timeout: stub.TransitionStage(request, timeout=timeout))

    async def merge_attributes(self, user_id: uuid.UUID, attributes: JsonObject) -> None:
        """UpdateUser with `attributes` as a merge patch; UsersRefused as transition_stage."""
        request = users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=str(user_id), attributes=dict_to_struct(attributes))
        )
        request.update_mask.paths.append("attributes")
        await self._write(lambda stub, timeout: stub.UpdateUser(request, timeout=timeout))

    async def _write(self, call: _Call) -> None:
        try:
            await call(self._stub(), self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            raise UsersRefused.of(error) from error
