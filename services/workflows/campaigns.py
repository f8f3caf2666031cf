"""Recurring campaigns (docs/workflows.md, "Recurring campaigns"): a workflow
whose start event is a timer cycle starts, on each cycle, one execution per
member of the segment its start event names.

While the workflow is active, its next cycle is a `scheduled` row of
campaign_cycles (the definitions' moves keep it: `follow`). When it is due,
the campaign worker begins it (it becomes `running` and the cycle after it is
scheduled, so a long cycle does not hold back the next), then pages through
the segment's members (ListSegmentMembers): each page's executions and the
cursor that moves past them commit in one transaction, through the
StartExecution batch path, each start keyed by (workflow, cycle moment, user)
in idempotency_keys. A restart resumes at the cursor, a page done again
starts nobody twice. A segments service that does not answer rests the cycle,
backing off; a segment that does not exist fails it (its error is on
GetWorkflow) and the next cycle comes all the same.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import grpc

from runtime.database import UnitOfWork
from runtime.errors import Unavailable
from runtime.idempotency import RequestKey
from runtime.identity import acting_for
from runtime.worker import doubling
from services.workflows.bpmn_campaigns import campaign_of
from services.workflows.domain import ACTIVE, PRODUCER, Started, StartRequest, WorkflowRecord
from services.workflows.executions import START_METHOD, Executions
from services.workflows.expressions import parse_cycle
from services.workflows.graph import Definition
from services.workflows.segments_peer import MembersPage, SegmentsPeer, SegmentsRefused
from services.workflows.step_rows import Notes
from services.workflows.stepper import Stepper
from services.workflows.store import campaigns as store
from services.workflows.store.campaigns import SCHEDULED, CycleRow
from services.workflows.store.definitions import WorkflowVersion, load_definitions

log = logging.getLogger(__name__)

# The request ids of a campaign's starts: one per (workflow, cycle moment, user).
START_NAMESPACE = uuid.UUID("5b0f6c1e-2d7a-4f4b-8e53-0c9a7d1e4f62")
# The waits of a cycle whose segments call failed: doubling from the first to the most.
FIRST_RETRY_SECONDS = 1.0
MOST_RETRY_SECONDS = 300.0


def start_key(workflow_id: uuid.UUID, due_at: datetime, user_id: uuid.UUID) -> RequestKey:
    """The request_id of the user's start in the cycle due at `due_at`."""
    request_id = uuid.uuid5(START_NAMESPACE, f"{workflow_id}/{due_at.isoformat()}/{user_id}")
    return RequestKey(START_METHOD, request_id, hashlib.sha256(request_id.bytes).digest())


def first_due(cycle_text: str, now: datetime, last: datetime | None) -> datetime:
    """The first moment of a cycle a workflow is activated with (or changed to):
    its start, unless a cycle of the workflow began at or after it already;
    else the first firing after now."""
    cycle = parse_cycle(cycle_text)
    if cycle.start is not None and (last is None or cycle.start > last):
        return cycle.start
    return cycle.interval.after(now if last is None else max(now, last))


def following(cycle: CycleRow, now: datetime) -> CycleRow | None:
    """The cycle after `cycle`, which begins now; None once its repetitions ran
    out. Moments missed while no replica ran are skipped, not run in a burst."""
    if cycle.repetitions_left == 0:
        return None
    interval = parse_cycle(cycle.cycle).interval
    due = interval.after(cycle.due_at)
    if due <= now:
        due = interval.after(now)
    left = None if cycle.repetitions_left is None else cycle.repetitions_left - 1
    return replace(cycle, due_at=due, repetitions_left=left)


class Campaigns:
    """Schedules campaigns' cycles and runs the due ones, a page at a time."""

    def __init__(
        self, stepper: Stepper, executions: Executions, segments: SegmentsPeer, page_size: int
    ) -> None:
        self._stepper = stepper
        self._executions = executions
        self._segments = segments
        self.page_size = page_size

    def now(self) -> datetime:
        return self._stepper.clock.now()

    def on_clock_change(self, listener: Callable[[], None]) -> None:
        """`listener` runs whenever the clock jumps (a test's clock)."""
        self._stepper.clock.on_change(listener)

    # ------------------------------------------------------------ schedules

    async def follow(
        self, conn: asyncpg.Connection, workflow: WorkflowRecord, actors: tuple[str, ...]
    ) -> None:
        """Keeps the workflow's schedule as its status and current version ask,
        in the transaction that changed them: an active version with a cycle
        start has its next cycle scheduled (in place of an older version's);
        any other has none. Cycles that began go on."""
        spec = None
        if workflow.status == ACTIVE:
            key = WorkflowVersion(workflow.id, workflow.version)
            stored = (await load_definitions(conn, [key]))[key]
            spec = campaign_of(Definition.from_json(stored))
        if spec is None:
            await store.unschedule(conn, workflow.id)
            return
        cycle = parse_cycle(spec.cycle)
        due = first_due(spec.cycle, self.now(), await store.last_due(conn, workflow.id))
        repetitions = None if cycle.repetitions is None else cycle.repetitions - 1
        await store.schedule(
            conn,
            CycleRow(
                workflow_id=workflow.id,
                due_at=due,
                workflow_version=workflow.version,
                segment_id=spec.segment_id,
                cycle=spec.cycle,
                repetitions_left=repetitions,
                status=SCHEDULED,
                page_token="",
                started_count=0,
                failures=0,
                error_message=None,
                actors=actors,
                finished_at=None,
            ),
        )

    async def recent(self, workflow_id: uuid.UUID, limit: int) -> list[CycleRow]:
        return await store.recent_cycles(self._stepper.context.pool, workflow_id, limit)

    # ------------------------------------------------------------ cycles

    async def next_due(self) -> datetime | None:
        return await store.next_due(self._stepper.context.pool)

    async def run_due(self) -> bool:
        """Begins the cycle due longest, or does its next page; whether that
        moved it (not when another replica holds it)."""
        now = self.now()
        cycle = await store.due_cycle(self._stepper.context.pool, now)
        if cycle is None:
            return False
        if cycle.status == SCHEDULED:
            return await self._stepper.transaction(lambda uow, notes: self._begin(cycle, uow))
        return await self._page(cycle, now)

    async def _begin(self, cycle: CycleRow, uow: UnitOfWork) -> bool:
        await store.lock_workflow(uow.conn, cycle.workflow_id)
        locked = await store.lock_cycle(uow.conn, cycle)
        if locked is None:
            return False  # another replica began it
        await store.set_running(uow.conn, locked)
        after = following(locked, self.now())
        if after is not None:
            await store.schedule(uow.conn, after)
        log.info("campaign %s: cycle %s began", cycle.workflow_id, cycle.due_at.isoformat())
        return True

    async def _page(self, cycle: CycleRow, now: datetime) -> bool:
        pool = self._stepper.context.pool
        try:
            page = await self._segments.members(
                cycle.segment_id, self.page_size, cycle.page_token, cycle.actors
            )
        except Unavailable as error:
            wait = doubling(cycle.failures + 1, FIRST_RETRY_SECONDS, MOST_RETRY_SECONDS)
            await store.rest(pool, cycle, now + timedelta(seconds=wait), str(error))
            log.warning("campaign %s: %s; next try in %.0f s", cycle.workflow_id, error, wait)
            return True
        except SegmentsRefused as refusal:
            if refusal.code == grpc.StatusCode.INVALID_ARGUMENT and cycle.page_token:
                # A cursor the segments service no longer reads (its secret
                # changed): the starts already made are skipped by their keys.
                await store.restart_pages(pool, cycle)
                return True
            await store.fail(pool, cycle, str(refusal), now)
            log.warning("campaign %s: cycle failed: %s", cycle.workflow_id, refusal)
            return True
        return await self._stepper.transaction(
            lambda uow, notes: self._start_page(cycle, page, uow, notes)
        )

    async def _start_page(
        self, cycle: CycleRow, page: MembersPage, uow: UnitOfWork, notes: Notes
    ) -> bool:
        """The page's executions and the cursor past them, in one transaction."""
        if await store.lock_cycle(uow.conn, cycle) is None:
            return False  # another replica is doing this page
        actors = acting_for(PRODUCER, cycle.actors).actors
        requests = [
            StartRequest(
                cycle.workflow_id,
                user_id,
                {},
                start_key(cycle.workflow_id, cycle.due_at, user_id),
                use_existing=False,
                exclusive=False,
                actors=actors,
                version=cycle.workflow_version,
            )
            for user_id in page.user_ids
        ]
        outcomes = await self._executions.start_batch(requests, uow, notes) if requests else []
        started = sum(isinstance(outcome, Started) for outcome in outcomes)
        refused = [o for o in outcomes if isinstance(o, Exception)]
        if refused:
            # Erased users, mostly: nobody to start for.
            log.info(
                "campaign %s: %d members not started: %s",
                cycle.workflow_id,
                len(refused),
                refused[0],
            )
        await store.advance(uow.conn, cycle, page.next_page_token, started, self.now())
        return True
