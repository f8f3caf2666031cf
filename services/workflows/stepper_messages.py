"""Messages a step publishes (`lifecycle.publish_message`, publish_rules.py),
a part of the stepper's follow-ups (stepper_events.py). Each is published in
the transaction of the step that completed its element, as PublishMessage
publishes one with the thrower's user (executions.py): committed with that
step, or not at all, so that it is published exactly once.

- The users of the messages are locked alone first (store/locks.py), as a
  publish locks them: a step of the user that starts waiting meanwhile and
  this publish see each other's commit. The step holds the lock shared
  already; PostgreSQL lets it take it alone once the user's other work has
  committed (a deadlock with another step doing the same is broken by
  PostgreSQL, and that step is retried).
- A message goes to each execution of the user waiting for it (its name and
  key: the correlation key within the user, or the user id), once per
  execution (its oldest token waiting, among the stored subscriptions and this
  step's, that nothing else answers in this step), and starts the active
  workflows whose start event waits for it, for the user (one running
  execution per user and workflow). One that nothing received is buffered for
  its time to live.
- A user's messages go one after the other (`publish_waves`), as
  PublishMessages would publish them: the first is settled before the next
  is matched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from services.workflows.domain import NewMessage, publish_waves
from services.workflows.interpreter import Interpreter
from services.workflows.publish_rules import ThrownMessage
from services.workflows.state import ExecutionState, MessageDelivered, Start, Trigger
from services.workflows.store import executions as execution_store
from services.workflows.store import messages as message_store
from services.workflows.store.definitions import WorkflowVersion, message_start_workflows
from services.workflows.store.executions import NewExecution
from services.workflows.store.locks import lock_users_alone
from services.workflows.store.messages import Correlation, Subscriber

if TYPE_CHECKING:
    from services.workflows.stepper import Advance

NewState = Callable[..., ExecutionState]
Queue = dict[uuid.UUID, list[Trigger]]
Thrown = tuple[Interpreter, ThrownMessage]


async def start_executions(
    conn: asyncpg.Connection, result: Advance, queue: Queue, new: Sequence[NewExecution]
) -> set[uuid.UUID]:
    """Inserts the executions an event of the step starts and queues their
    start; the ids inserted (an exclusive one whose user runs its workflow
    already is left out)."""
    if not new:
        return set()
    inserted = await execution_store.insert_executions(conn, new)
    for execution in new:
        if execution.state.id in inserted:
            result.states[execution.state.id] = execution.state
            queue[execution.state.id].append(Start())
    return inserted


async def publish_thrown(
    conn: asyncpg.Connection, result: Advance, queue: Queue, now: datetime, new_state: NewState
) -> None:
    """Publishes the messages the runs threw since the last follow-up,
    adding to `queue` the deliveries and starts they give."""
    thrown: list[Thrown] = []
    for run in list(result.runs.values()):
        thrown += [(run, message) for message in run.events.messages]
        run.events.messages.clear()
    if not thrown:
        return
    await lock_users_alone(conn, {run.state.user_id for run, _ in thrown})
    starting = await message_start_workflows(conn, {message.name for _, message in thrown})
    unheard: list[NewMessage] = []
    for wave in publish_waves([run.state.user_id for run, _ in thrown]):
        messages = [thrown[n] for n in wave]
        heard = await _deliver(conn, result, queue, messages)
        new = {
            n: [
                NewExecution(_started(run, message, workflow, now, new_state), exclusive=True)
                for workflow in starting.get(message.name, ())
            ]
            for n, (run, message) in enumerate(messages)
        }
        inserted = await start_executions(
            conn, result, queue, [e for started in new.values() for e in started]
        )
        for n, (run, message) in enumerate(messages):
            started = any(e.state.id in inserted for e in new[n])
            if not heard[n] and not started and message.ttl > timedelta(0):
                unheard.append(_buffered(run, message))
    if unheard:
        await message_store.buffer_messages(conn, unheard, now)


async def _deliver(
    conn: asyncpg.Connection, result: Advance, queue: Queue, messages: list[Thrown]
) -> list[bool]:
    """Queues each message (of distinct users) for the executions waiting for
    it; whether each reached one."""
    wanted = [Correlation(run.state.user_id, m.name, m.correlation_key) for run, m in messages]
    stored = await message_store.subscribers(conn, wanted, every=True)
    answered = {
        (execution_id, trigger.token)
        for execution_id, triggers in queue.items()
        for trigger in triggers
        if isinstance(trigger, MessageDelivered)
    }
    heard = []
    for run, message in messages:
        user = run.state.user_id
        waiting = sorted(
            [*stored.get(user, ()), *_fresh(result.runs.values(), user, message)],
            key=lambda s: (s.execution_id, s.token),
        )
        reached: set[uuid.UUID] = set()
        for s in waiting:
            if s.execution_id in reached or (s.execution_id, s.token) in answered:
                continue
            if not _alive(result, s):
                continue
            reached.add(s.execution_id)
            answered.add((s.execution_id, s.token))
            queue[s.execution_id].append(
                MessageDelivered(s.token, s.element_id, message.variables, thrown=True)
            )
        heard.append(bool(reached))
    return heard


def _key(user: uuid.UUID, key: str | None) -> str:
    """What a subscription and a message correlate on: the key, else the user id."""
    return str(user) if key is None else key


def _fresh(
    runs: Iterable[Interpreter], user: uuid.UUID, message: ThrownMessage
) -> list[Subscriber]:
    """The subscriptions of this step (not written yet) that wait for `message` of `user`."""
    wanted = _key(user, message.correlation_key)
    return [
        Subscriber(run.state.id, token, element)
        for run in runs
        if run.state.user_id == user
        for token, element, name in run.step.subscriptions
        if name == message.name
        and _key(user, run.events.correlation_keys.get((token, element))) == wanted
    ]


def _alive(result: Advance, subscriber: Subscriber) -> bool:
    """Whether the subscriber's token is still there (this step may have removed it)."""
    run = result.runs.get(subscriber.execution_id)
    return run is None or subscriber.token in run.state.tokens


def _started(
    run: Interpreter,
    message: ThrownMessage,
    workflow: WorkflowVersion,
    now: datetime,
    new_state: NewState,
) -> ExecutionState:
    """An execution a message starts, for the thrower's user, on behalf of whom it works for."""
    workflow_id, version = workflow
    return new_state(
        workflow_id,
        version,
        run.state.user_id,
        dict(message.variables),
        now,
        actors=run.state.actors,
    )


def _buffered(run: Interpreter, message: ThrownMessage) -> NewMessage:
    return NewMessage(
        message.name,
        run.state.user_id,
        None,
        message.variables,
        message.ttl,
        message.correlation_key,
    )
