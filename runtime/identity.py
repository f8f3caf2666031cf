"""Who is calling: for the call being served, and for the calls and changes a
service makes on its behalf.

The server interceptor authenticates each call (runtime.auth) and serves it
within `calling_as(caller)`. A change the call makes is attributed to
`current_caller().actors`: the original caller first, then each service that
acted on its behalf (a client's TrackEvent fires a trigger, which starts a
workflow, which moves the user: `("alice", "service:triggers",
"service:workflows")`). A service passes the chain on with its own calls
(metadata ON_BEHALF_OF, trusted only from a service) and stores it with
what it does later on the caller's behalf (outbox messages, pending starts,
executions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

# Metadata a service sends with its calls: the actors it acts for, comma-separated.
ON_BEHALF_OF = "lifecycle-on-behalf-of"
SERVICE_PREFIX = "service:"


@dataclass(frozen=True)
class Caller:
    """A client (a token's subject) or one of the suite's services."""

    subject: str
    # The suite's service calling, when the caller is one (by its certificate or token).
    service: str | None
    # What a client may do (runtime.auth); services are checked by name instead.
    permissions: frozenset[str]
    # The actors a service acts for, the original caller first.
    on_behalf_of: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """How changes and logs name this caller alone."""
        return f"{SERVICE_PREFIX}{self.service}" if self.service else self.subject

    @property
    def actors(self) -> tuple[str, ...]:
        """The chain a change is attributed to: whom this caller acts for, then itself."""
        return (*self.on_behalf_of, self.actor)


# The caller when authentication is off (`lifecycle up` without --auth): anyone
# who reaches the port may do anything, as before authentication existed.
ANONYMOUS = Caller("anonymous", None, frozenset({"*"}))

_current: ContextVar[Caller] = ContextVar("lifecycle_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    return _current.get()


@contextlib.contextmanager
def calling_as(caller: Caller) -> Iterator[None]:
    token = _current.set(caller)
    try:
        yield
    finally:
        _current.reset(token)


def acting_for(service: str, actors: tuple[str, ...]) -> Caller:
    """A service as the caller of work it does later on behalf of `actors`, the
    chain it stored with that work (`current_caller().actors` when it was
    asked): an outbox message, a pending start, an execution's timers and jobs."""
    return Caller(service, service, frozenset(), actors)
