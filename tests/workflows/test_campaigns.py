"""Recurring campaigns (docs/workflows.md, "Recurring campaigns"): a timer
cycle start event starts, on each cycle, one execution per member of the
segment it names, a page at a time, exactly once per (cycle, member) across
restarts of the workflows service and outages of the segments service.

Real users, segments and workflows services on loopback, on a database of
this module's own; the workflows service runs on a clock the tests move, with
a page of 3 members, so that the 8 members of a segment take 3 pages."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.users.v1 import users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.clock import ManualClock
from runtime.migrations import acting_as
from runtime.server import ServiceHost
from runtime.structs import dict_to_struct
from services.workflows.maintenance import RETENTION, maintenance
from services.workflows.service import DEFINITION, build_with
from services.workflows.settings import WorkflowSettings
from services.workflows.store.locks import USER_LOCK
from suite.registry import DEFINITIONS, schema_owners
from tests.support import (
    TRACER_PROVIDER,
    ScratchDatabase,
    eventually,
    free_port,
    running,
    service_config,
    service_env,
)
from tests.workflows.bpmn_docs import HEAD
from tests.workflows.conftest import Stub, new_user, refused

PAGE = 3
MEMBERS = 8
START = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class Suite:
    env: dict[str, str]
    clock: ManualClock
    admin: asyncpg.Connection
    users: users_pb2_grpc.UserServiceAsyncStub
    segments: segments_pb2_grpc.SegmentServiceAsyncStub
    workflows: Stub
    # The services that a test stops and starts again, at the same address.
    hosts: dict[str, ServiceHost]

    async def start(self, service: str) -> None:
        if service == "workflows":
            settings = WorkflowSettings(poll_seconds=0.2, campaign_page_size=PAGE)
            definition = replace(DEFINITION, build=build_with(self.clock, settings))
        else:
            definition = DEFINITIONS[service]
        host = ServiceHost(definition, service_config(service, self.env), TRACER_PROVIDER)
        await host.start()
        self.hosts[service] = host

    async def stop(self, service: str) -> None:
        await self.hosts[service].stop()


@pytest.fixture(scope="module")
async def suite(own_database: ScratchDatabase) -> AsyncIterator[Suite]:
    ports = {name: free_port() for name in ("users", "segments", "workflows")}
    # The users service answers UNIMPLEMENTED at once for the metrics and
    # triggers calls the outboxes make: they wait there, nobody reads them.
    elsewhere = f"127.0.0.1:{ports['users']}"
    env = service_env(
        own_database,
        ports,
        LIFECYCLE_METRICS_ADDRESS=elsewhere,
        LIFECYCLE_TRIGGERS_ADDRESS=elsewhere,
    )
    address = {name: env[f"LIFECYCLE_{name.upper()}_ADDRESS"] for name in ports}
    async with (
        running("users", env),
        grpc.aio.insecure_channel(address["users"]) as users_channel,
        grpc.aio.insecure_channel(address["segments"]) as segments_channel,
        grpc.aio.insecure_channel(address["workflows"]) as workflows_channel,
    ):
        admin = await asyncpg.connect(own_database.admin_url)
        suite = Suite(
            env,
            ManualClock(START),
            admin,
            users_pb2_grpc.UserServiceStub(users_channel),
            segments_pb2_grpc.SegmentServiceStub(segments_channel),
            workflows_pb2_grpc.WorkflowServiceStub(workflows_channel),
            {},
        )
        try:
            await suite.start("segments")
            await suite.start("workflows")
            yield suite
        finally:
            for host in suite.hosts.values():
                await host.stop()
            await admin.close()


def campaign_bpmn(segment_id: str, cycle: str, segment_property: bool = True) -> str:
    properties = (
        '<bpmn:extensionElements><zeebe:properties><zeebe:property name="segment"'
        f' value="{segment_id}"/></zeebe:properties></bpmn:extensionElements>'
        if segment_property
        else ""
    )
    return (
        f'{HEAD}<bpmn:process id="campaign" isExecutable="true">'
        f'<bpmn:startEvent id="every">{properties}<bpmn:timerEventDefinition>'
        f"<bpmn:timeCycle>{cycle}</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:startEvent>"
        '<bpmn:endEvent id="done"/>'
        '<bpmn:sequenceFlow id="f1" sourceRef="every" targetRef="done"/>'
        "</bpmn:process></bpmn:definitions>"
    )


def hourly_from(moment: datetime, repetitions: str = "") -> str:
    return f"R{repetitions}/{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}/PT1H"


async def segment_of(suite: Suite, count: int = MEMBERS) -> tuple[str, list[str]]:
    """A segment of `count` new users, refreshed; its id and its members in id order."""
    tag = uuid.uuid4().hex
    users = [await new_user(suite.users, campaign=tag) for _ in range(count)]
    condition = {"v": 1, "all": [{"attr": "campaign", "op": "eq", "value": tag}]}
    created = await suite.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(
                name=f"campaign {tag}", conditions=dict_to_struct(condition)
            )
        )
    )
    refreshed = await suite.segments.RefreshSegment(
        segments_pb2.RefreshSegmentRequest(segment_id=created.segment.id)
    )
    assert refreshed.member_count == count
    return created.segment.id, sorted(users, key=uuid.UUID)


async def launch(suite: Suite, segment_id: str, cycle: str) -> pb.Workflow:
    created = await suite.workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(
            workflow=pb.Workflow(name="campaign", bpmn_xml=campaign_bpmn(segment_id, cycle))
        )
    )
    activated = await suite.workflows.ActivateWorkflow(
        pb.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return activated.workflow


async def cycles(suite: Suite, workflow_id: str) -> list[pb.CampaignCycle]:
    reply = await suite.workflows.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow_id))
    return list(reply.campaign_cycles)


def scheduled(found: list[pb.CampaignCycle]) -> list[datetime]:
    return [
        c.cycle_time.ToDatetime(UTC) for c in found if c.state == pb.CAMPAIGN_CYCLE_STATE_SCHEDULED
    ]


async def cycle_at(suite: Suite, workflow_id: str, moment: datetime) -> pb.CampaignCycle:
    (found,) = [
        c for c in await cycles(suite, workflow_id) if c.cycle_time.ToDatetime(UTC) == moment
    ]
    return found


async def until_cycle(
    suite: Suite, workflow_id: str, moment: datetime, state: Any
) -> pb.CampaignCycle:
    async def reached() -> bool:
        found = await cycle_at(suite, workflow_id, moment)
        return bool(found.state == state)

    await eventually(reached)
    return await cycle_at(suite, workflow_id, moment)


async def until_started(suite: Suite, workflow_id: str, moment: datetime, count: int) -> None:
    async def started() -> bool:
        found = [
            c for c in await cycles(suite, workflow_id) if c.cycle_time.ToDatetime(UTC) == moment
        ]
        return bool(found) and found[0].started_count >= count

    await eventually(started)


async def cycle_row(suite: Suite, workflow_id: str, moment: datetime) -> asyncpg.Record:
    row = await suite.admin.fetchrow(
        "SELECT status, started_count, error_message FROM workflows.campaign_cycles"
        " WHERE workflow_id = $1 AND due_at = $2",
        uuid.UUID(workflow_id),
        moment,
    )
    assert row is not None
    return row


async def deactivate(suite: Suite, workflow_id: str) -> None:
    await suite.workflows.DeactivateWorkflow(pb.DeactivateWorkflowRequest(workflow_id=workflow_id))


async def executions_per_user(suite: Suite, workflow_id: str) -> dict[str, int]:
    rows = await suite.admin.fetch(
        "SELECT user_id::text AS user_id, count(*) AS n FROM workflows.workflow_executions"
        " WHERE workflow_id = $1 GROUP BY user_id",
        uuid.UUID(workflow_id),
    )
    return {row["user_id"]: row["n"] for row in rows}


async def move_to(suite: Suite, moment: datetime) -> None:
    if moment > suite.clock.now():
        suite.clock.set(moment)
    await asyncio.sleep(0)


@asynccontextmanager
async def holding_user(suite: Suite, user_id: str) -> AsyncIterator[None]:
    """The user's advisory lock held alone, as an erase holds it: a page of
    starts that includes the user waits until it is released."""
    conn = await asyncpg.connect(suite.env["LIFECYCLE_DATABASE_URL"])
    try:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", USER_LOCK, user_id)
        yield
    finally:
        await conn.close()


# ---------------------------------------------------------------- tests


async def test_each_cycle_starts_one_execution_per_member(suite: Suite) -> None:
    segment_id, members = await segment_of(suite)
    first = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, segment_id, hourly_from(first, "2"))
    assert scheduled(await cycles(suite, workflow.id)) == [first]

    await move_to(suite, first)
    done = await until_cycle(suite, workflow.id, first, pb.CAMPAIGN_CYCLE_STATE_COMPLETED)
    assert done.started_count == MEMBERS
    assert done.segment_id == segment_id and done.workflow_version == "1.0.0"
    assert await executions_per_user(suite, workflow.id) == dict.fromkeys(members, 1)
    second = first + timedelta(hours=1)
    assert scheduled(await cycles(suite, workflow.id)) == [second]

    await move_to(suite, second)
    await until_cycle(suite, workflow.id, second, pb.CAMPAIGN_CYCLE_STATE_COMPLETED)
    assert await executions_per_user(suite, workflow.id) == dict.fromkeys(members, 2)
    # R2: the repetitions ran out, nothing more is scheduled.
    assert scheduled(await cycles(suite, workflow.id)) == []


async def test_a_restart_mid_cycle_resumes_at_its_cursor(suite: Suite) -> None:
    segment_id, members = await segment_of(suite)
    due = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, segment_id, hourly_from(due))
    # The second page waits for its first member's lock: the first page commits
    # alone, and the service stops before the third.
    async with holding_user(suite, members[PAGE]):
        await move_to(suite, due)
        await until_started(suite, workflow.id, due, PAGE)
        stopping = asyncio.create_task(suite.stop("workflows"))
        await asyncio.sleep(0.1)
    await stopping
    stopped_at = await cycle_row(suite, workflow.id, due)
    assert stopped_at["status"] == "running"
    assert stopped_at["started_count"] < MEMBERS
    # A page's executions and its cursor committed together.
    started = await executions_per_user(suite, workflow.id)
    assert sum(started.values()) == stopped_at["started_count"]

    await suite.start("workflows")
    await until_cycle(suite, workflow.id, due, pb.CAMPAIGN_CYCLE_STATE_COMPLETED)
    assert await executions_per_user(suite, workflow.id) == dict.fromkeys(members, 1)
    await deactivate(suite, workflow.id)


async def outbox_report(suite: Suite) -> str:
    """What `lifecycle outbox --service workflows` prints for the suite's database."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "suite.cli",
        "outbox",
        "--service",
        "workflows",
        env={**os.environ, "LIFECYCLE_DATABASE_URL": suite.env["LIFECYCLE_DATABASE_URL"]},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return out.decode()


async def test_a_cycle_waits_for_the_segments_service(suite: Suite) -> None:
    segment_id, members = await segment_of(suite)
    due = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, segment_id, hourly_from(due))
    await suite.stop("segments")
    await move_to(suite, due)

    async def waiting() -> bool:
        found = await cycle_at(suite, workflow.id, due)
        return "segments service did not answer" in found.error_message

    await eventually(waiting)
    assert (await cycle_at(suite, workflow.id, due)).state == pb.CAMPAIGN_CYCLE_STATE_RUNNING
    assert await executions_per_user(suite, workflow.id) == {}
    listed = await outbox_report(suite)
    assert f"workflows: pending segments.list_segment_members: 1 messages, oldest {due}" in listed

    await suite.start("segments")

    async def completed() -> bool:
        # Time goes on, a second per look, past each back-off, while the
        # workflows service's channel reconnects.
        suite.clock.advance(timedelta(seconds=1))
        found = await cycle_at(suite, workflow.id, due)
        return bool(found.state == pb.CAMPAIGN_CYCLE_STATE_COMPLETED)

    await eventually(completed)
    done = await cycle_at(suite, workflow.id, due)
    assert done.error_message == "" and done.started_count == MEMBERS
    assert await executions_per_user(suite, workflow.id) == dict.fromkeys(members, 1)
    await deactivate(suite, workflow.id)


async def test_an_unknown_segment_fails_the_cycle_and_the_next_comes(suite: Suite) -> None:
    due = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, str(uuid.uuid4()), hourly_from(due))
    await move_to(suite, due)
    failed = await until_cycle(suite, workflow.id, due, pb.CAMPAIGN_CYCLE_STATE_FAILED)
    assert "NOT_FOUND" in failed.error_message
    assert failed.finish_time.ToDatetime(UTC) == due
    assert scheduled(await cycles(suite, workflow.id)) == [due + timedelta(hours=1)]
    await deactivate(suite, workflow.id)


async def test_deactivating_stops_the_cycles_to_come_not_the_one_begun(suite: Suite) -> None:
    segment_id, members = await segment_of(suite)
    due = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, segment_id, hourly_from(due))
    async with holding_user(suite, members[PAGE]):
        await move_to(suite, due)
        await until_started(suite, workflow.id, due, PAGE)
        await deactivate(suite, workflow.id)
        assert scheduled(await cycles(suite, workflow.id)) == []
    done = await until_cycle(suite, workflow.id, due, pb.CAMPAIGN_CYCLE_STATE_COMPLETED)
    assert done.started_count == MEMBERS
    assert await executions_per_user(suite, workflow.id) == dict.fromkeys(members, 1)
    await move_to(suite, due + timedelta(hours=3))
    assert len(await cycles(suite, workflow.id)) == 1

    # Activated again, it schedules its cycle again, after the one that ran.
    await suite.workflows.ActivateWorkflow(pb.ActivateWorkflowRequest(workflow_id=workflow.id))
    assert scheduled(await cycles(suite, workflow.id)) == [due + timedelta(hours=4)]
    await deactivate(suite, workflow.id)


async def test_a_new_version_supersedes_the_schedule(suite: Suite) -> None:
    segment_id, _ = await segment_of(suite, count=1)
    workflow = await launch(suite, segment_id, hourly_from(suite.clock.now() + timedelta(hours=2)))
    now = suite.clock.now()
    noon = datetime(now.year, now.month, now.day, 12, tzinfo=UTC)
    noon += timedelta(days=1) if noon <= now else timedelta(0)
    updated = await suite.workflows.UpdateWorkflow(
        pb.UpdateWorkflowRequest(
            workflow=pb.Workflow(
                id=workflow.id, bpmn_xml=campaign_bpmn(segment_id, "0 0 12 * * *")
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["bpmn_xml"]),
        )
    )
    assert updated.workflow.version == "1.1.0"
    found = await cycles(suite, workflow.id)
    assert scheduled(found) == [noon]
    assert found[0].workflow_version == "1.1.0"
    await deactivate(suite, workflow.id)


async def test_start_execution_starts_the_user_at_once(suite: Suite) -> None:
    segment_id, _ = await segment_of(suite, count=1)
    workflow = await launch(suite, segment_id, "@daily")
    user_id = await new_user(suite.users)
    reply = await suite.workflows.StartExecution(
        pb.StartExecutionRequest(workflow_id=workflow.id, user_id=user_id)
    )
    assert reply.execution.status == pb.EXECUTION_STATUS_COMPLETED
    await deactivate(suite, workflow.id)


async def test_cron_cycles_are_saved_wherever_cycles_are(suite: Suite) -> None:
    segment_id = str(uuid.uuid4())
    for cycle in ("0 0 9 * * MON-FRI", "@weekly", "R/PT1H", "R5/2031-01-01T00:00:00Z/P1D"):
        await suite.workflows.CreateWorkflow(
            pb.CreateWorkflowRequest(
                workflow=pb.Workflow(name="cron", bpmn_xml=campaign_bpmn(segment_id, cycle))
            )
        )
    boundary = (
        f'{HEAD}<bpmn:process id="reminders" isExecutable="true">'
        '<bpmn:startEvent id="start"/><bpmn:userTask id="review"/>'
        '<bpmn:boundaryEvent id="remind" attachedToRef="review" cancelActivity="false">'
        "<bpmn:timerEventDefinition><bpmn:timeCycle>0 0 9 * * MON</bpmn:timeCycle>"
        '</bpmn:timerEventDefinition></bpmn:boundaryEvent><bpmn:endEvent id="end"/>'
        '<bpmn:endEvent id="reminded"/>'
        '<bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review"/>'
        '<bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end"/>'
        '<bpmn:sequenceFlow id="f3" sourceRef="remind" targetRef="reminded"/>'
        "</bpmn:process></bpmn:definitions>"
    )
    await suite.workflows.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=pb.Workflow(name="cron", bpmn_xml=boundary))
    )


@pytest.mark.parametrize(
    ("bpmn", "message"),
    [
        (
            campaign_bpmn("", "R/PT1H", segment_property=False),
            "element 'every': a timer cycle start event starts a recurring campaign:"
            ' name its segment with <zeebe:property name="segment"',
        ),
        (
            campaign_bpmn("everyone", "R/PT1H"),
            "element 'every': the segment property must be a segment id (a UUID), not 'everyone'",
        ),
        (
            campaign_bpmn(str(uuid.uuid4()), "=cycle"),
            "element 'every': a timer cycle on the process's start event must be a literal",
        ),
        (
            campaign_bpmn(str(uuid.uuid4()), "0 0 0 L * *"),
            "element 'every': timer '0 0 0 L * *': day-of-month uses 'L' (last day)",
        ),
        (
            campaign_bpmn(str(uuid.uuid4()), "0 0 9 * *"),
            "element 'every': timer '0 0 9 * *' has 5 fields; a cron expression has 6",
        ),
    ],
)
async def test_a_campaign_start_is_refused_at_save(suite: Suite, bpmn: str, message: str) -> None:
    assert message in await refused(suite.workflows, bpmn)


async def test_retention_deletes_cycles_ended_a_year_ago(suite: Suite) -> None:
    segment_id, _ = await segment_of(suite, count=1)
    due = suite.clock.now() + timedelta(minutes=5)
    workflow = await launch(suite, segment_id, hourly_from(due))
    await move_to(suite, due)
    done = await until_cycle(suite, workflow.id, due, pb.CAMPAIGN_CYCLE_STATE_COMPLETED)
    ended = done.finish_time.ToDatetime(UTC)
    owners = {o.schema: o for o in schema_owners(suite.env["LIFECYCLE_DATABASE_URL"], env={})}
    async with acting_as(suite.admin, owners["workflows"]):
        # A year to the day after it ended, it stays; a day later, it goes.
        within = await maintenance(suite.admin, (ended + RETENTION).date())
        kept = scheduled(await cycles(suite, workflow.id)), len(await cycles(suite, workflow.id))
        after = await maintenance(suite.admin, (ended + RETENTION + timedelta(days=1)).date())
    assert kept == ([due + timedelta(hours=1)], 2)
    assert any(line.startswith("deleted 0 campaign cycles ended before") for line in within)
    assert not any(line.startswith("deleted 0 campaign cycles") for line in after)
    # The scheduled cycle of the active workflow stays.
    assert [c.state for c in await cycles(suite, workflow.id)] == [
        pb.CAMPAIGN_CYCLE_STATE_SCHEDULED
    ]
    await deactivate(suite, workflow.id)
