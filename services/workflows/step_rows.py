"""The rows and lifecycle events one execution's step writes (a part of the
stepper, stepper.py), and what its commit must wake: what belongs to a token
the step removed again is not written."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from runtime.chains import Chain
from runtime.lifecycle_events import EventBatch
from services.workflows.domain import Profile
from services.workflows.interpreter import Interpreter
from services.workflows.stepper_events import correlation_key, signal_rows
from services.workflows.store import steps
from services.workflows.store.executions import TokenKey
from services.workflows.store.user_tasks import ClosedUserTask, new_user_task


@dataclass
class Notes:
    """What a committed step tells the workers: job types to wake, the earliest new timer."""

    job_types: set[str] = field(default_factory=set)
    earliest_timer: datetime | None = None


def collect(
    run: Interpreter,
    w: steps.Writes,
    events: EventBatch,
    *,
    now: datetime,
    profiles: dict[uuid.UUID, Profile],
    notes: Notes,
    actors: Chain,
) -> None:
    """Adds the rows and lifecycle events of `run`'s step, attributed to
    `actors`; notes what its commit must wake. What belongs to a token the step
    removed again (a timer, a subscription, a job, an incident) is not written."""
    state, step = run.state, run.step
    execution_id, alive = state.id, state.tokens
    w.removed_tokens += [TokenKey(execution_id, no) for no in step.removed]
    w.consumed_timers += [steps.TimerKey(execution_id, no, el) for no, el in step.consumed_timers]
    for no in sorted(step.added):
        token = alive[no]
        w.tokens.append(
            steps.NewToken(execution_id, no, token.element, token.scope, token.via, token.variables)
        )
    for timer in step.timers:
        if timer.token in alive:
            w.timers.append(
                steps.NewTimer(execution_id, timer.token, timer.element, timer.due_at, timer.repeat)
            )
            if notes.earliest_timer is None or timer.due_at < notes.earliest_timer:
                notes.earliest_timer = timer.due_at
    w.subscriptions += [
        steps.NewSubscription(
            execution_id,
            token,
            element,
            name,
            state.user_id,
            correlation_key(run, token, element),
            now,
        )
        for token, element, name in step.subscriptions
        if token in alive
    ]
    w.signal_subscriptions += signal_rows(run, alive)
    for job in step.jobs:
        if job.token in alive:
            w.jobs.append(
                steps.NewJob(
                    execution_id,
                    job.token,
                    job.type,
                    job.element,
                    state.workflow_id,
                    state.user_id,
                    job.headers,
                    job.retries,
                    now,
                )
            )
            notes.job_types.add(job.type)
    for task in step.user_tasks:
        if task.token in alive:
            w.user_tasks.append(new_user_task(state, task, now))
    w.closed_user_tasks += [ClosedUserTask(execution_id, no, now) for no in step.closed_user_tasks]
    w.incidents += [
        steps.NewIncident(execution_id, i.token, i.element, False, i.message, now)
        for i in step.incidents
        if i.token in alive
    ]
    w.history += [
        steps.NewHistory(execution_id, h.element, h.type, h.state, h.at) for h in step.history
    ]
    profile = profiles.get(state.user_id)
    stage = profile.get("stage") if profile else None
    for event_type, data in step.events:
        events.add(
            event_type,
            now,
            user_id=state.user_id,
            stage=stage,
            data=data,
            workflow_execution_id=execution_id,
            actors=actors,
        )
