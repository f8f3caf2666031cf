"""What a step's events ask of other executions (a part of the stepper's
follow-ups, stepper.py): errors and escalations a called execution did not
catch go to its call activity; signals thrown are broadcast in the same step,
to every token waiting for them (one statement finds them) and to the active
workflows a signal of that name starts, for the thrower's user; call
activities naming a BPMN process id find their workflow; messages thrown
are published in the same step (stepper_messages.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from services.workflows.interpreter import Interpreter
from services.workflows.state import (
    ChildErrorThrown,
    ChildRequest,
    EscalationRaised,
    ExecutionState,
    MessageDelivered,
    Trigger,
)
from services.workflows.stepper_messages import publish_thrown, start_executions
from services.workflows.store import signals as signal_store
from services.workflows.store.executions import NewExecution
from services.workflows.store.signals import NewSignalSubscription, SignalSubscriber

if TYPE_CHECKING:
    from services.workflows.stepper import Advance

NewState = Callable[..., ExecutionState]


async def event_follow_ups(
    conn: asyncpg.Connection,
    result: Advance,
    queue: dict[uuid.UUID, list[Trigger]],
    now: datetime,
    new_state: NewState,
) -> None:
    """Adds to `queue` the triggers the runs' errors, escalations, signals and
    messages (stepper_messages.py) give."""
    await publish_thrown(conn, result, queue, now, new_state)
    thrown: list[tuple[Interpreter, str]] = []
    for run in list(result.runs.values()):
        events = run.events
        if events.escalations or events.errors:
            assert run.state.parent is not None
            parent, token = run.state.parent
            queue[parent] += [EscalationRaised(token, e.code) for e in events.escalations]
            queue[parent] += [ChildErrorThrown(token, e.code, e.message) for e in events.errors]
            events.escalations.clear()
            events.errors.clear()
        thrown += [(run, name) for name in events.signals]
        events.signals.clear()
    if not thrown:
        return
    names = {name for _, name in thrown}
    stored = await signal_store.subscribers(conn, names)
    fresh = [
        SignalSubscriber(run.state.id, s.token, s.element, s.name)
        for run in result.runs.values()
        for s in run.events.signal_subscriptions
        if s.name in names and s.token in run.state.tokens
    ]
    for _, name in thrown:
        for subscriber in [*stored, *fresh]:
            if subscriber.name == name:
                queue[subscriber.execution_id].append(
                    MessageDelivered(subscriber.token, subscriber.element_id, {})
                )
    await _signal_starts(conn, result, queue, thrown, now=now, new_state=new_state)


async def _signal_starts(
    conn: asyncpg.Connection,
    result: Advance,
    queue: dict[uuid.UUID, list[Trigger]],
    thrown: list[tuple[Interpreter, str]],
    *,
    now: datetime,
    new_state: NewState,
) -> None:
    """Starts the workflows a thrown signal starts, for the thrower's user
    (one running execution per user and workflow, as a message start)."""
    starting = await signal_store.signal_start_workflows(conn, {name for _, name in thrown})
    new = []
    for run, name in thrown:
        for workflow_id, version in starting.get(name, ()):
            state = new_state(
                workflow_id, version, run.state.user_id, {}, now, actors=run.state.actors
            )
            new.append(NewExecution(state, exclusive=True))
    await start_executions(conn, result, queue, new)


def signal_rows(run: Interpreter, alive: Iterable[int]) -> list[NewSignalSubscription]:
    """The signal subscriptions of `run`'s step whose token is still there."""
    tokens = set(alive)
    return [
        NewSignalSubscription(run.state.id, s.token, s.element, s.name, run.now)
        for s in run.events.signal_subscriptions
        if s.token in tokens
    ]


def correlation_key(run: Interpreter, token: int, element: str) -> str | None:
    """The correlation key of a message subscription of `run`'s step (None: the user id)."""
    return run.events.correlation_keys.get((token, element))


async def resolve_calls(
    conn: asyncpg.Connection, children: list[tuple[Interpreter, ChildRequest]]
) -> list[tuple[Interpreter, ChildRequest]]:
    """The call requests with their workflow id: a call by BPMN process id goes
    to the one active workflow whose current version runs that process; with
    none, or several, it is an incident on the call activity."""
    wanted = {child.process_id for _, child in children if child.process_id}
    if not wanted:
        return children
    found = await signal_store.workflows_by_process(conn, wanted)
    resolved = []
    for run, child in children:
        if not child.process_id:
            resolved.append((run, child))
            continue
        workflows = found.get(child.process_id, [])
        if len(workflows) == 1:
            resolved.append((run, replace(child, workflow_id=str(workflows[0]))))
            continue
        if child.token not in run.state.tokens:
            continue
        if workflows:
            run.incident_at(
                child.token,
                f"{len(workflows)} active workflows run the BPMN process {child.process_id!r};"
                " name the one to call by its workflow id",
            )
        else:
            run.incident_at(
                child.token, f"no active workflow runs the BPMN process {child.process_id!r}"
            )
    return resolved
