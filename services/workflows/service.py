"""How the runtime builds and runs the workflows service: wiring only."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from clients.users import UsersClient
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.lifecycle_events import DESTINATIONS, RECORD_EVENTS
from runtime.server import ServiceComponents, ServiceContext, ServiceDefinition
from services.workflows.campaigns import Campaigns
from services.workflows.definitions import WorkflowDirectory
from services.workflows.executions import Executions
from services.workflows.jobs import BuiltinJobs, Jobs
from services.workflows.maintenance import maintenance
from services.workflows.peers import UsersPeer
from services.workflows.segments_peer import SegmentsPeer
from services.workflows.servicer import WorkflowServicer
from services.workflows.settings import WorkflowSettings, load_settings
from services.workflows.signals import Signals
from services.workflows.stepper import Stepper
from services.workflows.store.campaigns import WAITING_CYCLES
from services.workflows.store.jobs import WAITING_USERS_CALLS
from services.workflows.timers import DueTimers
from services.workflows.user_tasks import UserTasks
from services.workflows.waits import ExecutionWaits
from services.workflows.workers import BuiltinJobWorker, CampaignWorker, TimerWorker


def build_with(
    clock: Clock = SYSTEM_CLOCK,
    settings: WorkflowSettings | None = None,
    *,
    on_built: Callable[[Stepper], None] | None = None,
) -> Callable[[ServiceContext], Coroutine[Any, Any, ServiceComponents]]:
    """The service's build function on a clock (tests pass one they move by
    days); `on_built` is given the stepper (tests watch it)."""

    async def build(context: ServiceContext) -> ServiceComponents:
        chosen = settings or load_settings()
        users = UsersPeer(UsersClient(context.clients))
        stepper = Stepper(context, clock, users.profile)
        executions = Executions(stepper)
        campaigns = Campaigns(
            stepper, executions, SegmentsPeer(context.clients), chosen.campaign_page_size
        )
        servicer = WorkflowServicer(
            WorkflowDirectory(stepper, chosen.max_bpmn_bytes, campaigns),
            executions,
            Jobs(stepper),
            context.page_tokens,
            UserTasks(stepper),
            signals=Signals(stepper),
            waits=ExecutionWaits(stepper),
        )

        def register(server: grpc.aio.Server) -> None:
            workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(servicer, server)

        workers = [
            TimerWorker(DueTimers(stepper, chosen.timer_batch), chosen.poll_seconds),
            BuiltinJobWorker(
                BuiltinJobs(stepper, users, chosen.builtin_job_lease),
                chosen.builtin_job_batch,
                chosen.poll_seconds,
            ),
            CampaignWorker(campaigns, chosen.poll_seconds),
        ]
        if on_built is not None:
            on_built(stepper)
        return ServiceComponents(register=register, workers=workers)

    return build


DEFINITION = ServiceDefinition(
    name="workflows",
    migrations=Path(__file__).parent / "migrations",
    build=build_with(),
    destinations={RECORD_EVENTS: DESTINATIONS[RECORD_EVENTS]},
    calls=frozenset({"users", "segments"}),
    maintenance=maintenance,
    waiting=f"({WAITING_USERS_CALLS}) UNION ALL ({WAITING_CYCLES})",
    batch_items=frozenset(
        {
            "lifecycle.workflows.v1.PublishMessagesRequest.messages",
            "lifecycle.workflows.v1.StartExecutionsRequest.starts",
        }
    ),
)
