"""gRPC entry point of the users service: validate, call the use case, map back."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2

from conditions import SQL, parse_condition
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime import wire_checks
from runtime.errors import InvalidArgument, Violations
from runtime.idempotency import request_key
from runtime.pagination import PageTokens, parse_time_and_id, parse_time_and_number, time_and_id
from runtime.parsing import optional_time, parse_stage, parse_stages, parse_uuid
from runtime.stages import stage_value
from runtime.structs import dict_to_struct, json_object, set_timestamp, timestamp
from services.users.domain import (
    DEFAULT_STAGE,
    ConditionQuery,
    ImportRow,
    Profile,
    StageChange,
    Transition,
    User,
    UserChange,
    UserFilter,
    encode_attributes,
    normalize_email,
)
from services.users.handlers import ImportSummary, UserDirectory, UserMatcher
from services.users.recording import UserEvents
from services.users.servicer_events import event_messages, event_reads, recorded_events

Context = grpc.aio.ServicerContext[Any, Any]
UPDATABLE = ("email", "attributes")
# Kept within one transaction each, so that locks stay short on big imports.
IMPORT_CHUNK_ROWS = 5000
# Transactions an import writes at once (bench/RESULTS.md).
IMPORT_LANES = 4
# A chunk being written: its task, its rows as given, the index of its first row.
_Writing = tuple["asyncio.Task[ImportSummary]", list[users_pb2.UserImport], int]
MAX_REPORTED_IMPORT_ERRORS = 1000
MAX_MATCH_USER_IDS = 10_000
MAX_PROFILES = 1000


def user_message(user: User) -> users_pb2.User:
    return users_pb2.User(
        id=str(user.id),
        email=user.email,
        lifecycle_stage=stage_value(user.stage),
        attributes=dict_to_struct(user.attributes),
        create_time=timestamp(user.created_at),
        update_time=timestamp(user.updated_at),
        etag=user.etag,
    )


def transition_message(transition: Transition) -> users_pb2.StageTransition:
    return users_pb2.StageTransition(
        id=transition.id,
        user_id=str(transition.user_id),
        from_stage=stage_value(transition.from_stage),
        to_stage=stage_value(transition.to_stage),
        transition_time=timestamp(transition.transitioned_at),
        workflow_execution_id=str(transition.workflow_execution_id or ""),
        metadata=dict_to_struct(transition.metadata),
    )


def _attributes(struct: struct_pb2.Struct, field: str, violations: Violations) -> str:
    """The attributes of a request as the JSON text to store."""
    return encode_attributes(json_object(struct, field, violations) or {}, field, violations)


def profile_message(profile: Profile) -> users_pb2.UserProfile:
    message = users_pb2.UserProfile(
        user_id=str(profile.user_id),
        lifecycle_stage=stage_value(profile.stage),
        attributes_json=profile.attributes_json,
        create_time=timestamp(profile.created_at),
    )
    if profile.stage_entered_at is not None:
        set_timestamp(message.stage_enter_time, profile.stage_entered_at)
    message.events.extend(event_messages(profile.events))
    return message


def _user_ids(
    values: Sequence[str], field: str, limit: int, violations: Violations
) -> list[uuid.UUID]:
    if len(values) > limit:
        violations.add(field, f"must hold at most {limit} ids")
        return []
    parsed = [parse_uuid(value, f"{field}[{i}]", violations) for i, value in enumerate(values)]
    return [user_id for user_id in parsed if user_id is not None]


def _match_query(
    request: users_pb2.MatchUserIdsRequest | users_pb2.CountUsersRequest,
    violations: Violations,
    user_ids: Sequence[uuid.UUID] = (),
    limit: int = 0,
    next_entry: bool = False,
) -> ConditionQuery:
    """The query a MatchUserIds or CountUsers request asks for; INVALID_ARGUMENT names
    the bad part of the condition (e.g. condition.all[0].op)."""
    stages = parse_stages(list(request.lifecycle_stages), "lifecycle_stages", violations)
    condition = None
    if not request.HasField("condition"):
        violations.add("condition", "is required")
    else:
        try:
            given = json_object(request.condition, "condition", violations)
            if given is not None:
                condition = parse_condition(given, "condition", SQL)
        except InvalidArgument as error:
            violations.items += error.violations
    violations.check()
    assert condition is not None
    as_of = optional_time(request, "as_of") or datetime.now(UTC)
    return ConditionQuery(
        condition, as_of, tuple(sorted(stages)), tuple(user_ids), limit, next_entry
    )


class UserServicer(users_pb2_grpc.UserServiceServicer):
    def __init__(
        self,
        directory: UserDirectory,
        matcher: UserMatcher,
        page_tokens: PageTokens,
        events: UserEvents,
    ) -> None:
        self._directory = directory
        self._matcher = matcher
        self._tokens = page_tokens
        self._events = events

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: Context
    ) -> users_pb2.CreateUserResponse:
        violations = Violations()
        if not request.HasField("user"):
            raise InvalidArgument.field("user", "is required")
        email = normalize_email(request.user.email, "user.email", violations)
        stage = parse_stage(
            request.user.lifecycle_stage, "user.lifecycle_stage", violations, default=DEFAULT_STAGE
        )
        attributes = _attributes(request.user.attributes, "user.attributes", violations)
        key = request_key(request, "CreateUser", violations)
        violations.check()
        assert stage is not None
        user = await self._directory.create_user(email, stage, attributes, key)
        return users_pb2.CreateUserResponse(user=user_message(user))

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: Context
    ) -> users_pb2.GetUserResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "email" and request.email.strip():
            return users_pb2.GetUserResponse(
                user=user_message(await self._directory.get_user_by_email(request.email))
            )
        if lookup != "user_id":
            raise InvalidArgument.field("user_id", "user_id or email is required")
        violations = Violations()
        user_id = parse_uuid(request.user_id, "user_id", violations)
        violations.check()
        assert user_id is not None
        return users_pb2.GetUserResponse(user=user_message(await self._directory.get_user(user_id)))

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: Context
    ) -> users_pb2.ListUsersResponse:
        violations = Violations()
        where = UserFilter(
            stages=tuple(
                sorted(parse_stages(list(request.lifecycle_stages), "lifecycle_stages", violations))
            ),
            created_after=optional_time(request, "created_after"),
            created_before=optional_time(request, "created_before"),
        )
        violations.check()
        users, next_token = await self._tokens.read_page(
            request,
            [where.stages, where.created_after, where.created_before],
            lambda cursor, limit: self._directory.list_users(where, cursor, limit),
            lambda user: time_and_id(user.created_at, user.id),
            parse_time_and_id,
        )
        return users_pb2.ListUsersResponse(
            users=[user_message(u) for u in users], next_page_token=next_token
        )

    async def UpdateUser(
        self, request: users_pb2.UpdateUserRequest, context: Context
    ) -> users_pb2.UpdateUserResponse:
        violations = Violations()
        user_id = parse_uuid(request.user.id, "user.id", violations)
        paths = self._update_paths(request)
        replace = "*" in paths
        change = UserChange(
            email=normalize_email(request.user.email, "user.email", violations)
            if replace or "email" in paths
            else None,
            attributes_json=_attributes(request.user.attributes, "user.attributes", violations)
            if replace or "attributes" in paths
            else None,
            replace_attributes=replace,
        )
        violations.check()
        assert user_id is not None
        user = await self._directory.update_user(user_id, change, request.user.etag)
        return users_pb2.UpdateUserResponse(user=user_message(user))

    @staticmethod
    def _update_paths(request: users_pb2.UpdateUserRequest) -> set[str]:
        if not request.HasField("update_mask"):
            paths = {"email"} if request.user.email else set()
            return paths | ({"attributes"} if request.user.HasField("attributes") else set())
        paths = set(request.update_mask.paths)
        for path in paths - {*UPDATABLE, "*"}:
            hint = "; use TransitionStage" if path == "lifecycle_stage" else ""
            raise InvalidArgument.field("update_mask", f"{path!r} cannot be updated{hint}")
        if not paths:
            raise InvalidArgument.field("update_mask", "names no field")
        return paths

    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: Context
    ) -> users_pb2.DeleteUserResponse:
        violations = Violations()
        user_id = parse_uuid(request.user_id, "user_id", violations)
        violations.check()
        assert user_id is not None
        await self._directory.erase_user(user_id, request.etag, request.allow_missing)
        return users_pb2.DeleteUserResponse()

    async def TransitionStage(
        self, request: users_pb2.TransitionStageRequest, context: Context
    ) -> users_pb2.TransitionStageResponse:
        violations = Violations()
        user_id = parse_uuid(request.user_id, "user_id", violations)
        to_stage = parse_stage(request.to_stage, "to_stage", violations)
        execution_id = parse_uuid(
            request.workflow_execution_id, "workflow_execution_id", violations, required=False
        )
        key = request_key(request, "TransitionStage", violations)
        metadata = json_object(request.metadata, "metadata", violations)
        violations.check()
        assert user_id is not None and to_stage is not None and metadata is not None
        change = StageChange(
            to_stage=to_stage,
            workflow_execution_id=execution_id,
            metadata=metadata,
            allow_same_stage=request.allow_same_stage,
        )
        user, transition = await self._directory.transition_stage(user_id, change, key)
        return users_pb2.TransitionStageResponse(
            user=user_message(user), transition=transition_message(transition)
        )

    async def GetLifecycleHistory(
        self, request: users_pb2.GetLifecycleHistoryRequest, context: Context
    ) -> users_pb2.GetLifecycleHistoryResponse:
        violations = Violations()
        user_id = parse_uuid(request.user_id, "user_id", violations)
        violations.check()
        assert user_id is not None
        transitions, next_token = await self._tokens.read_page(
            request,
            [str(user_id)],
            lambda cursor, limit: self._directory.history(user_id, cursor, limit),
            lambda transition: time_and_id(transition.transitioned_at, transition.id),
            parse_time_and_number,
        )
        return users_pb2.GetLifecycleHistoryResponse(
            transitions=[transition_message(t) for t in transitions], next_page_token=next_token
        )

    async def ImportUsers(
        self, request_iterator: AsyncIterator[users_pb2.ImportUsersRequest], context: Context
    ) -> users_pb2.ImportUsersResponse:
        response = users_pb2.ImportUsersResponse()
        writer = _ImportWriter(self._directory, response)
        next_index = 0
        try:
            async for request in request_iterator:
                for start in range(0, len(request.users), IMPORT_CHUNK_ROWS):
                    chunk = list(request.users[start : start + IMPORT_CHUNK_ROWS])
                    rows = self._import_rows(chunk, next_index, response)
                    await writer.write(rows, chunk, next_index)
                    next_index += len(chunk)
            await writer.finish()
        finally:
            writer.cancel()
        errors = sorted(response.errors, key=lambda error: error.index)
        del response.errors[:]
        response.errors.extend(errors)
        return response

    async def MatchUserIds(
        self, request: users_pb2.MatchUserIdsRequest, context: Context
    ) -> AsyncIterator[users_pb2.MatchUserIdsResponse]:
        violations = Violations()
        user_ids = _user_ids(request.user_ids, "user_ids", MAX_MATCH_USER_IDS, violations)
        if request.limit < 0:
            violations.add("limit", "must not be negative")
        elif request.limit and request.include_next_entry:
            violations.add("limit", "must be 0 with include_next_entry, which reads every user")
        query = _match_query(
            request, violations, user_ids, request.limit, request.include_next_entry
        )
        async for batch in self._matcher.match(query):
            response = users_pb2.MatchUserIdsResponse(
                user_ids=batch.user_ids, valid_until_micros=batch.valid_until
            )
            if batch.next_entry is not None:
                set_timestamp(response.next_entry_time, batch.next_entry)
            yield response

    async def CountUsers(
        self, request: users_pb2.CountUsersRequest, context: Context
    ) -> users_pb2.CountUsersResponse:
        query = _match_query(request, Violations())
        return users_pb2.CountUsersResponse(count=await self._matcher.count(query))

    async def BatchGetUserProfiles(
        self, request: users_pb2.BatchGetUserProfilesRequest, context: Context
    ) -> users_pb2.BatchGetUserProfilesResponse:
        violations = Violations()
        user_ids = _user_ids(request.user_ids, "user_ids", MAX_PROFILES, violations)
        reads = event_reads(request, violations)
        violations.check()
        profiles = await self._matcher.profiles(user_ids, reads)
        return users_pb2.BatchGetUserProfilesResponse(
            profiles=[profile_message(profile) for profile in profiles]
        )

    async def RecordUserEvents(
        self, request: users_pb2.RecordUserEventsRequest, context: Context
    ) -> users_pb2.RecordUserEventsResponse:
        violations = Violations()
        events = recorded_events(request, violations)
        violations.check()
        recorded = await self._events.record(events) if events else 0
        return users_pb2.RecordUserEventsResponse(recorded_count=recorded)

    @staticmethod
    def _import_rows(
        chunk: list[users_pb2.UserImport], first_index: int, response: users_pb2.ImportUsersResponse
    ) -> list[ImportRow]:
        rows = []
        seen: dict[str, int] = {}
        for offset, item in enumerate(chunk):
            index = first_index + offset
            violations = Violations()
            if not wire_checks.item_clean(item, violations):
                _add_error(response, index, item.email, *_first(violations))
                continue
            email = normalize_email(item.email, "email", violations)
            stage = None
            if item.lifecycle_stage:
                stage = parse_stage(item.lifecycle_stage, "lifecycle_stage", violations)
            attributes = _attributes(item.attributes, "attributes", violations)
            earlier = seen.setdefault(email.lower(), index)
            if earlier != index:
                violations.add("email", f"repeats the email of row {earlier} of this batch")
            if violations.items:
                _add_error(response, index, item.email, *_first(violations))
                continue
            rows.append(ImportRow(index, email, stage, attributes))
        return rows


def _first(violations: Violations) -> tuple[str, str]:
    """The field and description an import error reports of a row's violations."""
    first = violations.items[0]
    return first.field, first.description


def _add_error(
    response: users_pb2.ImportUsersResponse, index: int, email: str, field: str, message: str
) -> None:
    response.failed_count += 1
    if len(response.errors) < MAX_REPORTED_IMPORT_ERRORS:
        response.errors.add(index=index, email=email, field=field, message=message)


class _ImportWriter:
    """Writes the chunks of an import on IMPORT_LANES transactions at once, while
    the stream's next chunk is validated. A row goes to the lane of its email,
    so that the rows naming one user still apply in stream order."""

    def __init__(self, directory: UserDirectory, response: users_pb2.ImportUsersResponse) -> None:
        self._directory = directory
        self._response = response
        self._lanes: list[_Writing | None] = [None] * IMPORT_LANES

    async def write(
        self, rows: list[ImportRow], chunk: list[users_pb2.UserImport], first_index: int
    ) -> None:
        parts: list[list[ImportRow]] = [[] for _ in self._lanes]
        for row in rows:
            parts[zlib.crc32(row.email.lower().encode()) % IMPORT_LANES].append(row)
        for lane, part in enumerate(parts):
            if part:
                await self._settle(lane)
                task = asyncio.create_task(self._directory.import_users(part))
                self._lanes[lane] = (task, chunk, first_index)

    async def _settle(self, lane: int) -> None:
        writing = self._lanes[lane]
        if writing is not None:
            self._lanes[lane] = None
            _add_summary(self._response, await writing[0], *writing[1:])

    async def finish(self) -> None:
        for lane in range(IMPORT_LANES):
            await self._settle(lane)

    def cancel(self) -> None:
        for writing in self._lanes:
            if writing is not None:
                writing[0].cancel()


def _add_summary(
    response: users_pb2.ImportUsersResponse,
    summary: ImportSummary,
    chunk: list[users_pb2.UserImport],
    first_index: int,
) -> None:
    response.created_count += summary.created
    response.updated_count += summary.updated
    response.unchanged_count += summary.unchanged
    for index, field, message in summary.failed:
        _add_error(response, index, chunk[index - first_index].email, field, message)
