"""`lifecycle.publish_message`, the built-in task that publishes a message of
the workflows service, as PublishMessage does with the execution's user: its
parameters, checked when the workflow is saved (a header, an input that reads
no variable) or when the task runs (the other inputs), and the message it
makes. No I/O: the interpreter records the message, and the stepper publishes
it in the transaction of the step that completes the element
(stepper_messages.py), so that it is published exactly once.

| Parameter | Value | Absent |
|---|---|---|
| `messageName` | a non-empty string (at most 255 characters) | refused |
| `correlationKey` | a string or an int: a key within the user | the user id |
| `variables` | CEL giving a map: the message's variables | none |
| `timeToLive` | an ISO-8601 duration, at most 365 days | 0: not buffered |
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from runtime.parsing import MAX_NAME_LENGTH
from services.workflows.domain import variables_problems
from services.workflows.expressions import ExpressionError, parse_duration

MESSAGE_NAME = "messageName"
CORRELATION_KEY = "correlationKey"
VARIABLES = "variables"
TIME_TO_LIVE = "timeToLive"
# As PublishMessage's time_to_live.
MAX_TIME_TO_LIVE = timedelta(days=365)
# The characters of a bad value an incident shows.
SHOWN = 100


class BadParameter(ValueError):
    """What is wrong with a parameter's value: 'must be ...'."""


@dataclass(frozen=True)
class ThrownMessage:
    """A message a step publishes for its execution's user."""

    name: str
    # The key within the user; None: the user id.
    correlation_key: str | None
    variables: dict[str, Any]
    ttl: timedelta


def message_name(value: object) -> str:
    if value is None:
        raise BadParameter("is required")
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME_LENGTH:
        raise BadParameter(f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    return value.strip()


def correlation_key(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, str | int) else ""
    if isinstance(value, bool) or not text or len(text) > MAX_NAME_LENGTH:
        raise BadParameter(
            f"must be a non-empty string or an int of at most {MAX_NAME_LENGTH} characters"
        )
    return text


def time_to_live(value: object) -> timedelta:
    if value is None:
        return timedelta(0)
    spoken = (
        "must be an ISO-8601 duration in weeks, days, hours, minutes or seconds,"
        f" at most P{MAX_TIME_TO_LIVE.days}D"
    )
    if not isinstance(value, str):
        raise BadParameter(spoken)
    try:
        duration = parse_duration(value)
    except ExpressionError as error:
        raise BadParameter(spoken) from error
    # Months and years have no fixed length: a time to live is counted in days.
    if duration.months or duration.delta > MAX_TIME_TO_LIVE:
        raise BadParameter(spoken)
    return duration.delta


# The scalar parameters, each read by its rule; `variables` is a map (MAP_PARAMETERS).
RULES: dict[str, Callable[[object], object]] = {
    MESSAGE_NAME: message_name,
    CORRELATION_KEY: correlation_key,
    TIME_TO_LIVE: time_to_live,
}


def problem_of(key: str, value: object) -> str | None:
    """What is wrong with the value of parameter `key` (None: absent), if anything."""
    try:
        RULES[key](value)
    except BadParameter as error:
        return _described(error, value)
    return None


def _described(error: BadParameter, value: object) -> str:
    if value is None:
        return str(error)
    shown = repr(value)
    # A value can be as large as the variables: the incident names its start.
    return f"{error} (got {shown if len(shown) <= SHOWN else shown[:SHOWN] + '...'})"


def _checked(key: str, value: object) -> Any:
    try:
        return RULES[key](value)
    except BadParameter as error:
        raise ExpressionError(f"parameter {key!r} {_described(error, value)}") from error


def thrown_message(
    parameter: Callable[[str], object], variables: dict[str, Any], user_id: uuid.UUID
) -> ThrownMessage:
    """The message a task publishes for `user_id`; `parameter(key)` is the
    value of its input of that name, else of its header (None: neither).
    ExpressionError names the parameter at fault."""
    name = _checked(MESSAGE_NAME, parameter(MESSAGE_NAME))
    key = _checked(CORRELATION_KEY, parameter(CORRELATION_KEY))
    ttl = _checked(TIME_TO_LIVE, parameter(TIME_TO_LIVE))
    if problems := variables_problems(variables):
        raise ExpressionError(f"parameter {VARIABLES!r}: {'; '.join(problems)}")
    # As PublishMessage: the user id as the key is no key.
    return ThrownMessage(name, None if key == str(user_id) else key, variables, ttl)
