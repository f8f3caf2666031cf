"""What the triggers service asks the other services directly: the users an
event names (BatchGetUserProfiles, GetUser by email) and whether a workflow
exists (GetWorkflow). Calls that must happen go through the outbox instead."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NoReturn

import grpc
from google.protobuf import timestamp_pb2

from conditions import UserProfile
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime.clients import ServiceClients
from runtime.errors import InvalidArgument, Unavailable
from runtime.stages import stage_name

PROFILES_PER_CALL = 1000
# Numbers as the decimals they are written as (docs/conditions.md); one decoder
# for all, as building one per document costs as much as decoding it.
_ATTRIBUTES = json.JSONDecoder(parse_float=Decimal)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


class KnownUser:
    """A user the users service answered for: the stage at once, the profile a
    condition reads only when one reads it (most events concern no such trigger)."""

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
                attributes=_ATTRIBUTES.decode(message.attributes_json),
                stage=self.stage,
                created_at=_moment(message.create_time),
                stage_entered_at=_moment(message.stage_enter_time)
                if message.HasField("stage_enter_time")
                else None,
            )
        return self._profile


def _failed(service: str, error: grpc.aio.AioRpcError) -> NoReturn:
    raise Unavailable(
        f"the {service} service failed to answer ({error.code().name}); retry",
        reason=f"{service.upper()}_UNAVAILABLE",
    ) from error


class Users:
    def __init__(self, clients: ServiceClients) -> None:
        self._clients = clients

    def _stub(self) -> users_pb2_grpc.UserServiceAsyncStub:
        return users_pb2_grpc.UserServiceStub(self._clients.channel("users"))

    async def profiles(self, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, KnownUser]:
        """Those of the users that exist."""
        wanted = list(user_ids)
        chunks = [
            wanted[start : start + PROFILES_PER_CALL]
            for start in range(0, len(wanted), PROFILES_PER_CALL)
        ]
        replies = await asyncio.gather(*(self._profiles(chunk) for chunk in chunks))
        return {
            uuid.UUID(message.user_id): KnownUser(message)
            for reply in replies
            for message in reply.profiles
        }

    async def _profiles(
        self, user_ids: Sequence[uuid.UUID]
    ) -> users_pb2.BatchGetUserProfilesResponse:
        request = users_pb2.BatchGetUserProfilesRequest(user_ids=[str(u) for u in user_ids])
        try:
            return await self._stub().BatchGetUserProfiles(request, timeout=self._clients.timeout())
        except grpc.aio.AioRpcError as error:
            _failed("users", error)

    async def by_email(self, emails: Iterable[str]) -> dict[str, uuid.UUID]:
        """The ids of the users with these emails (compared case-insensitively, as
        the users service does), for those that exist."""
        distinct = sorted({email.lower() for email in emails})
        found = await asyncio.gather(*(self._by_email(email) for email in distinct))
        return {email: user_id for email, user_id in zip(distinct, found, strict=True) if user_id}

    async def _by_email(self, email: str) -> uuid.UUID | None:
        try:
            reply = await self._stub().GetUser(
                users_pb2.GetUserRequest(email=email), timeout=self._clients.timeout()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            _failed("users", error)
        return uuid.UUID(reply.user.id)


class Workflows:
    def __init__(self, clients: ServiceClients) -> None:
        self._clients = clients

    async def check_startable(self, workflow_id: uuid.UUID, field: str) -> None:
        """INVALID_ARGUMENT unless the workflow exists and is not archived (a draft or
        inactive one may be activated later; until then firings start nothing)."""
        stub = workflows_pb2_grpc.WorkflowServiceStub(self._clients.channel("workflows"))
        try:
            reply = await stub.GetWorkflow(
                workflows_pb2.GetWorkflowRequest(workflow_id=str(workflow_id)),
                timeout=self._clients.timeout(),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument.field(
                    field, f"names no workflow: {workflow_id} does not exist"
                ) from error
            _failed("workflows", error)
        if reply.workflow.status == workflows_pb2.WORKFLOW_STATUS_ARCHIVED:
            raise InvalidArgument.field(field, f"workflow {workflow_id} is archived")
