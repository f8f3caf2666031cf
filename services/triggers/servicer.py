"""gRPC entry point of the triggers service: validate, call the use case, map back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from lifecycle.triggers.v1 import triggers_pb2 as pb
from lifecycle.triggers.v1 import triggers_pb2_grpc
from runtime import wire_checks
from runtime.chains import Chain
from runtime.clock import Clock
from runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Violations,
)
from runtime.idempotency import request_key
from runtime.identity import current_caller
from runtime.pagination import PageTokens, parse_time_and_id, time_and_id
from runtime.parsing import check_name, parse_uuid, required_id
from runtime.structs import compact_json, dict_to_struct, json_object, timestamp
from runtime.telemetry import current_traceparent
from services.triggers.domain import (
    EVERY_TIME,
    INVALID_EVENT,
    MAX_DATA_BYTES,
    MAX_FUTURE,
    MAX_MESSAGE_ID_LENGTH,
    ONCE_PER_PERIOD,
    ONCE_PER_USER,
    USER_ERASED,
    Action,
    Event,
    Outcome,
    Reentry,
    Refusal,
    Trigger,
    TriggerExecution,
    TriggerFields,
    TriggerFilter,
    check_event_type,
    check_pattern,
    check_reentry,
    parse_trigger_condition,
)
from services.triggers.handlers import Ingestor, TriggerDirectory, TriggerHistory

Context = grpc.aio.ServicerContext[Any, Any]

UPDATABLE = ("name", "event_type", "conditions", "workflow_id", "signal_name", "reentry")
# The fields of a trigger's action, exactly one of them set.
ACTIONS = ("workflow_id", "signal_name")
MAX_EVENTS = 5000
MAX_EMAIL_LENGTH = 255
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_MODES = {
    pb.REENTRY_MODE_UNSPECIFIED: EVERY_TIME,
    pb.REENTRY_MODE_EVERY_TIME: EVERY_TIME,
    pb.REENTRY_MODE_ONCE_PER_USER: ONCE_PER_USER,
    pb.REENTRY_MODE_ONCE_PER_PERIOD: ONCE_PER_PERIOD,
}
_MODE_VALUES = {
    EVERY_TIME: pb.REENTRY_MODE_EVERY_TIME,
    ONCE_PER_USER: pb.REENTRY_MODE_ONCE_PER_USER,
    ONCE_PER_PERIOD: pb.REENTRY_MODE_ONCE_PER_PERIOD,
}


def trigger_message(trigger: Trigger) -> pb.Trigger:
    message = pb.Trigger(
        id=str(trigger.id),
        name=trigger.name,
        event_type=trigger.event_type,
        conditions=dict_to_struct(trigger.conditions),
        workflow_id=str(trigger.action.workflow_id or ""),
        signal_name=trigger.action.signal_name or "",
        enabled=trigger.enabled,
        reentry=pb.ReentryPolicy(mode=_MODE_VALUES[trigger.reentry.mode]),
        create_time=timestamp(trigger.created_at),
        update_time=timestamp(trigger.updated_at),
    )
    if trigger.reentry.period is not None:
        message.reentry.period.FromTimedelta(trigger.reentry.period)
    return message


def execution_message(execution: TriggerExecution) -> pb.TriggerExecution:
    signal = execution.signal
    return pb.TriggerExecution(
        id=str(execution.id),
        trigger_id=str(execution.trigger_id),
        user_id=str(execution.user_id or ""),
        event_data=dict_to_struct(execution.event_data),
        condition_met=execution.condition_met,
        workflow_execution_id=str(execution.workflow_execution_id or ""),
        execute_time=timestamp(execution.executed_at),
        skip_reason=execution.skip_reason or "",
        event_type=execution.event_type or "",
        message_id=execution.message_id or "",
        signal=pb.SignalBroadcast(
            signal_name=signal.name,
            delivered_count=signal.delivered,
            started_count=signal.started,
        )
        if signal is not None
        else None,
    )


def _conditions(given: pb.Trigger, violations: Violations) -> dict[str, Any]:
    conditions = json_object(given.conditions, "trigger.conditions", violations)
    if conditions is None:
        return {}
    try:
        parse_trigger_condition(conditions, "trigger.conditions")
    except InvalidArgument as error:
        for violation in error.violations:
            violations.add(violation.field, violation.description)
    return conditions


def _reentry(given: pb.Trigger, violations: Violations) -> Reentry:
    mode = _MODES.get(given.reentry.mode)
    if mode is None:
        violations.add("trigger.reentry.mode", f"{given.reentry.mode} is not a re-entry mode")
        return Reentry()
    period = given.reentry.period.ToTimedelta() if given.reentry.HasField("period") else None
    return check_reentry(mode, period, "trigger.reentry", violations)


def _action(given: pb.Trigger, paths: set[str], violations: Violations) -> Action | None:
    """The action the paths set (None: none of its fields): exactly one of
    workflow_id and signal_name, the one set replacing the other."""
    named = [path for path in ACTIONS if path in paths]
    if not named:
        return None
    chosen = [path for path in named if getattr(given, path)]
    if len(chosen) > 1:
        violations.add("trigger.signal_name", "set either workflow_id or signal_name, not both")
    elif not chosen:
        violations.add(
            f"trigger.{named[0]}",
            "is required: a trigger starts a workflow (workflow_id) or broadcasts a signal"
            " (signal_name)",
        )
    elif chosen == ["signal_name"]:
        return Action(signal_name=check_name(given.signal_name, "trigger.signal_name", violations))
    else:
        return Action(workflow_id=parse_uuid(given.workflow_id, "trigger.workflow_id", violations))
    return None


def _fields(given: pb.Trigger, paths: set[str], violations: Violations) -> TriggerFields:
    return TriggerFields(
        name=check_name(given.name, "trigger.name", violations) if "name" in paths else None,
        event_type=check_pattern(given.event_type, "trigger.event_type", violations)
        if "event_type" in paths
        else None,
        conditions=_conditions(given, violations) if "conditions" in paths else None,
        action=_action(given, paths, violations),
        reentry=_reentry(given, violations) if "reentry" in paths else None,
    )


def _update_paths(request: pb.UpdateTriggerRequest, violations: Violations) -> set[str]:
    given = request.trigger
    if not request.HasField("update_mask"):
        paths = {p for p in ("name", "event_type", *ACTIONS) if getattr(given, p)}
        paths |= {p for p in ("conditions", "reentry") if given.HasField(p)}
    else:
        paths = set(request.update_mask.paths)
        if "*" in paths:
            paths = set(UPDATABLE)
    for path in sorted(paths - set(UPDATABLE)):
        hint = "; use EnableTrigger / DisableTrigger" if path == "enabled" else ""
        violations.add("update_mask", f"{path!r} cannot be updated{hint}")
    if not paths:
        violations.add("update_mask", "names no field")
    return paths


def parse_event(
    given: pb.Event,
    index: int,
    now: datetime,
    traceparent: str | None,
    violations: Violations,
    *,
    actors: Chain,
) -> Event:
    """The event as the pipeline takes it; problems go to `violations` under the
    event's field names."""
    user_id, email = None, None
    lookup = given.WhichOneof("user")
    if lookup == "email":
        email = given.email.strip()
        if not email or len(email) > MAX_EMAIL_LENGTH:
            violations.add("email", f"must be an email of 1 to {MAX_EMAIL_LENGTH} characters")
    elif lookup == "user_id":
        user_id = parse_uuid(given.user_id, "user_id", violations)
    else:
        violations.add("user_id", "user_id or email is required")
    check_event_type(given.event_type, "event_type", violations)
    data = json_object(given.data, "data", violations) or {}
    data_json = compact_json(data)
    if len(data_json.encode()) > MAX_DATA_BYTES:
        violations.add("data", f"must be at most {MAX_DATA_BYTES} bytes as JSON")
    event_time = now
    if given.HasField("event_time"):
        event_time = given.event_time.ToDatetime(tzinfo=UTC)
        if event_time > now + MAX_FUTURE:
            violations.add("event_time", "is more than a day in the future")
        elif event_time < _EARLIEST:
            violations.add("event_time", "is before 1970")
    message_id = given.message_id
    if not message_id:
        violations.add("message_id", "is required: the idempotency key of the event")
    elif len(message_id) > MAX_MESSAGE_ID_LENGTH or not message_id.isprintable():
        violations.add(
            "message_id", f"must be at most {MAX_MESSAGE_ID_LENGTH} printable characters"
        )
    return Event(
        index=index,
        user_id=user_id,
        email=email,
        event_type=given.event_type,
        data=data,
        data_struct=given.data,
        data_json=data_json,
        event_time=event_time,
        message_id=message_id,
        traceparent=traceparent,
        actors=actors,
    )


def _raise(refusal: Refusal) -> NoReturn:
    if refusal.reason == USER_ERASED:
        raise FailedPrecondition(refusal.message, reason=USER_ERASED)
    if refusal.reason == INVALID_EVENT:
        raise InvalidArgument.field(f"event.{refusal.field}", refusal.message)
    if refusal.cause is not None:
        raise refusal.cause
    raise NotFound(refusal.message, reason=refusal.reason, metadata={"field": refusal.field})


class TriggerServicer(triggers_pb2_grpc.TriggerServiceServicer):
    def __init__(
        self,
        directory: TriggerDirectory,
        history: TriggerHistory,
        ingestor: Ingestor,
        page_tokens: PageTokens,
        clock: Clock,
    ) -> None:
        self._directory = directory
        self._history = history
        self._ingestor = ingestor
        self._tokens = page_tokens
        self._clock = clock

    # ------------------------------------------------------------ triggers

    async def CreateTrigger(
        self, request: pb.CreateTriggerRequest, context: Context
    ) -> pb.CreateTriggerResponse:
        if not request.HasField("trigger"):
            raise InvalidArgument.field("trigger", "is required")
        violations = Violations()
        fields = _fields(request.trigger, set(UPDATABLE), violations)
        key = request_key(request, "CreateTrigger", violations)
        violations.check()
        trigger = await self._directory.create(fields, key)
        return pb.CreateTriggerResponse(trigger=trigger_message(trigger))

    async def GetTrigger(
        self, request: pb.GetTriggerRequest, context: Context
    ) -> pb.GetTriggerResponse:
        trigger = await self._directory.get(required_id(request.trigger_id, "trigger_id"))
        return pb.GetTriggerResponse(trigger=trigger_message(trigger))

    async def ListTriggers(
        self, request: pb.ListTriggersRequest, context: Context
    ) -> pb.ListTriggersResponse:
        violations = Violations()
        event_type = None
        if request.event_type:
            event_type = check_pattern(request.event_type, "event_type", violations)
        workflow_id = parse_uuid(request.workflow_id, "workflow_id", violations, required=False)
        violations.check()
        where = TriggerFilter(
            event_type,
            workflow_id,
            request.enabled if request.HasField("enabled") else None,
        )
        found, token = await self._tokens.read_page(
            request,
            [where.event_type, str(where.workflow_id or ""), where.enabled],
            lambda cursor, limit: self._directory.page(where, cursor, limit),
            lambda t: time_and_id(t.created_at, t.id),
            parse_time_and_id,
        )
        return pb.ListTriggersResponse(
            triggers=[trigger_message(t) for t in found], next_page_token=token
        )

    async def UpdateTrigger(
        self, request: pb.UpdateTriggerRequest, context: Context
    ) -> pb.UpdateTriggerResponse:
        violations = Violations()
        trigger_id = parse_uuid(request.trigger.id, "trigger.id", violations)
        paths = _update_paths(request, violations)
        fields = _fields(request.trigger, paths & set(UPDATABLE), violations)
        violations.check()
        assert trigger_id is not None
        trigger = await self._directory.update(trigger_id, fields)
        return pb.UpdateTriggerResponse(trigger=trigger_message(trigger))

    async def DeleteTrigger(
        self, request: pb.DeleteTriggerRequest, context: Context
    ) -> pb.DeleteTriggerResponse:
        await self._directory.delete(required_id(request.trigger_id, "trigger_id"))
        return pb.DeleteTriggerResponse()

    async def EnableTrigger(
        self, request: pb.EnableTriggerRequest, context: Context
    ) -> pb.EnableTriggerResponse:
        trigger_id = required_id(request.trigger_id, "trigger_id")
        trigger = await self._directory.set_enabled(trigger_id, True)
        return pb.EnableTriggerResponse(trigger=trigger_message(trigger))

    async def DisableTrigger(
        self, request: pb.DisableTriggerRequest, context: Context
    ) -> pb.DisableTriggerResponse:
        trigger_id = required_id(request.trigger_id, "trigger_id")
        trigger = await self._directory.set_enabled(trigger_id, False)
        return pb.DisableTriggerResponse(trigger=trigger_message(trigger))

    # ------------------------------------------------------------ events

    async def TrackEvent(
        self, request: pb.TrackEventRequest, context: Context
    ) -> pb.TrackEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument.field("event", "is required")
        violations = Violations()
        event = parse_event(
            request.event,
            0,
            self._clock.now(),
            current_traceparent(),
            violations,
            actors=current_caller().actors,
        )
        if violations.items:
            raise InvalidArgument(
                FieldViolation(f"event.{v.field}", v.description) for v in violations.items
            )
        [outcome] = await self._ingestor.track([event])
        if outcome.refusal is not None:
            _raise(outcome.refusal)
        return pb.TrackEventResponse(
            user_id=str(outcome.user_id or ""), duplicate=outcome.duplicate
        )

    async def TrackEvents(
        self, request: pb.TrackEventsRequest, context: Context
    ) -> pb.TrackEventsResponse:
        if len(request.events) > MAX_EVENTS:
            raise InvalidArgument.field("events", f"must hold at most {MAX_EVENTS} events")
        now, traceparent, actors = self._clock.now(), current_traceparent(), current_caller().actors
        response = pb.TrackEventsResponse()
        valid = []
        for index, given in enumerate(request.events):
            violations = Violations()
            event = None
            if wire_checks.item_clean(given, violations):
                event = parse_event(given, index, now, traceparent, violations, actors=actors)
            if event is None or violations.items:
                first = violations.items[0]
                response.errors.add(
                    index=index,
                    message_id=given.message_id,
                    field=first.field,
                    message="; ".join(v.description for v in violations.items),
                    reason=INVALID_EVENT,
                )
            else:
                valid.append(event)
        outcomes = await self._ingestor.track(valid)
        for event, outcome in zip(valid, outcomes, strict=True):
            _count(response, event, outcome)
        errors = sorted(response.errors, key=lambda error: error.index)
        del response.errors[:]
        response.errors.extend(errors)
        return response

    # ------------------------------------------------------------ executions

    async def ListTriggerExecutions(
        self, request: pb.ListTriggerExecutionsRequest, context: Context
    ) -> pb.ListTriggerExecutionsResponse:
        violations = Violations()
        trigger_id = parse_uuid(request.trigger_id, "trigger_id", violations, required=False)
        user_id = parse_uuid(request.user_id, "user_id", violations, required=False)
        if not request.trigger_id and not request.user_id:
            violations.add("trigger_id", "trigger_id or user_id is required")
        violations.check()
        found, token = await self._tokens.read_page(
            request,
            [str(trigger_id or ""), str(user_id or "")],
            lambda cursor, limit: self._history.page(trigger_id, user_id, cursor, limit),
            lambda e: time_and_id(e.executed_at, e.id),
            parse_time_and_id,
        )
        return pb.ListTriggerExecutionsResponse(
            trigger_executions=[execution_message(e) for e in found], next_page_token=token
        )

    async def EraseUserData(
        self, request: pb.EraseUserDataRequest, context: Context
    ) -> pb.EraseUserDataResponse:
        erased = await self._history.erase_user(required_id(request.user_id, "user_id"))
        return pb.EraseUserDataResponse(erased_count=erased)


def _count(response: pb.TrackEventsResponse, event: Event, outcome: Outcome) -> None:
    if outcome.refusal is not None:
        response.errors.add(
            index=event.index,
            message_id=event.message_id,
            field=outcome.refusal.field,
            message=outcome.refusal.message,
            reason=outcome.refusal.reason,
        )
    elif outcome.duplicate:
        response.duplicate_count += 1
    else:
        response.accepted_count += 1
