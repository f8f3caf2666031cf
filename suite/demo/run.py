"""The demo's course: start the suite unless it runs already, set up the
product, replay the simulated days through the services' APIs, let the
workflows finish, roll the metrics up and print what happened."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc

from lifecycle.metrics.v1 import metrics_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.users.v1 import users_pb2
from runtime.config import SERVICE_NAMES, load_tls_config, peer_addresses
from runtime.migrations import acting_as
from runtime.partitions import ensure_partitions
from runtime.structs import dict_to_struct, set_timestamp
from suite.certificates import LocalCertificates
from suite.demo.analytics import print_analytics
from suite.demo.catalog import Catalog, set_up
from suite.demo.clients import Suite, connected
from suite.demo.report import print_report
from suite.demo.simulation import Day, Person, Simulation
from suite.launcher import Supervisor, serving
from suite.registry import DEFINITIONS, schema_owners

T = TypeVar("T")

# TrackEvents and ImportUsers take this many at a time.
BATCH = 2000
BAR_WIDTH = 30


@dataclass(frozen=True)
class DemoSettings:
    users: int
    days: int
    day_seconds: float
    seed: int


async def suite_is_up(env: dict[str, str]) -> bool:
    """Whether every service answers at the address `env` gives it."""
    addresses, tls = peer_addresses(env), load_tls_config(env)
    return all(await asyncio.gather(*(serving(addresses[name], tls) for name in SERVICE_NAMES)))


async def run_demo(
    admin_url: str,
    env: dict[str, str],
    settings: DemoSettings,
    *,
    start_suite: bool,
    certificates: LocalCertificates | None = None,
    log_file: Path | None = None,
) -> int:
    """The demo; a suite it starts logs to `log_file` (None: the terminal)."""
    addresses = peer_addresses(env)
    async with (
        _suite(env, start_suite, certificates, log_file),
        connected(addresses, load_tls_config(env)) as suite,
    ):
        tag = secrets.token_hex(3)
        simulation = Simulation(
            settings.users, settings.days, settings.seed, tag, datetime.now(UTC)
        )
        await _partitions_for(admin_url, simulation.first_day.date())
        print(
            f"lifecycle demo: {settings.users:,} users over {settings.days} simulated days"
            f" (a day is {settings.day_seconds:g} s here)",
            flush=True,
        )
        catalog = await set_up(suite, tag, settings.day_seconds)
        for day in simulation.replay():
            started = time.monotonic()
            await _live(suite, simulation, day)
            _progress(day, simulation.days)
            await asyncio.sleep(max(0.0, settings.day_seconds - (time.monotonic() - started)))
        print(flush=True)
        await _caught_up(admin_url)
        members = await _refresh(suite, catalog)
        # The win-back runs on the segment's entries: give it its 5 days, and
        # the last nudges of the onboarding their 3 days.
        await asyncio.sleep(8 * settings.day_seconds)
        await _caught_up(admin_url)
        first, last = simulation.first_day.date(), simulation.now.date()
        await suite.metrics.RunRollup(
            metrics_pb2.RunRollupRequest(start_date=first.isoformat(), end_date=last.isoformat())
        )
        await print_analytics(suite, first, last)
        await print_report(suite, first, last, members)
    return 0


@contextlib.asynccontextmanager
async def _suite(
    env: dict[str, str],
    start: bool,
    certificates: LocalCertificates | None,
    log_file: Path | None,
) -> AsyncIterator[None]:
    """The suite as it runs, or started for the demo and stopped after it."""
    if not start:
        yield
        return
    logs = "" if log_file is None else f" (its logs: {log_file})"
    print(f"starting the suite for the demo{logs}...", flush=True)
    async with Supervisor(list(SERVICE_NAMES), env, certificates, log_file).running():
        yield


async def _partitions_for(admin_url: str, first_day: date) -> None:
    """Event partitions back to the first simulated day (migrations make the
    current month onwards)."""
    metrics = DEFINITIONS["metrics"]
    owner = next(o for o in schema_owners(admin_url) if o.schema == metrics.name)
    conn = await asyncpg.connect(admin_url)
    try:
        async with acting_as(conn, owner):
            for spec in metrics.partitioned_tables:
                await ensure_partitions(conn, spec, first_day)
    finally:
        await conn.close()


async def _caught_up(admin_url: str, patience_seconds: float = 300) -> None:
    """Waits until the services have sent what their outboxes hold (the calls
    and lifecycle events the replay caused), saying how much is left."""
    counts = " + ".join(f"(SELECT count(*) FROM {schema}.outbox)" for schema in DEFINITIONS)
    conn = await asyncpg.connect(admin_url)
    try:
        deadline = time.monotonic() + patience_seconds
        while time.monotonic() < deadline:
            waiting = await conn.fetchval(f"SELECT {counts}")
            sys.stdout.write(f"\rwaiting for the services to catch up: {waiting:>7,} messages ")
            sys.stdout.flush()
            if not waiting:
                break
            await asyncio.sleep(0.5)
        print(flush=True)
    finally:
        await conn.close()


async def _live(suite: Suite, simulation: Simulation, day: Day) -> None:
    """A simulated day through the APIs: new users, changed attributes, events."""
    if day.signups:
        # A little before, for the clocks of the client and the database.
        since = datetime.now(UTC) - timedelta(seconds=5)
        await _import(suite, day.signups)
        await _learn_ids(suite, day.signups, since)
    if day.active:
        await _import(suite, day.active)
    for chunk in _chunks(day.happenings, BATCH):
        request = triggers_pb2.TrackEventsRequest()
        for happening in chunk:
            event = request.events.add(
                user_id=happening.person.user_id,
                event_type=happening.event_type,
                message_id=f"{happening.person.email}/{happening.event_type}/{day.number}",
            )
            set_timestamp(event.event_time, happening.at)
        reply = await suite.triggers.TrackEvents(request)
        if reply.errors:
            print(f"\n{len(reply.errors)} events refused, e.g. {reply.errors[0].message}")


# ImportUsers answers ABORTED when it met a concurrent change of the same users
# (a workflow moving them on): the import, an upsert by email, is sent again.
IMPORT_ATTEMPTS = 5


async def _import(suite: Suite, people: Sequence[Person]) -> None:
    async def rows() -> AsyncIterator[users_pb2.ImportUsersRequest]:
        for chunk in _chunks(people, BATCH):
            yield users_pb2.ImportUsersRequest(
                users=[
                    users_pb2.UserImport(email=p.email, attributes=dict_to_struct(p.attributes()))
                    for p in chunk
                ]
            )

    for attempt in range(IMPORT_ATTEMPTS):
        try:
            reply = await suite.users.ImportUsers(rows())
            break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED or attempt == IMPORT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * 2**attempt)
    if reply.failed_count:
        print(f"\n{reply.failed_count} users refused, e.g. {reply.errors[0].message}")


async def _learn_ids(suite: Suite, people: Sequence[Person], since: datetime) -> None:
    """The ids the users service gave the people just imported."""
    by_email = {person.email: person for person in people}
    request = users_pb2.ListUsersRequest(page_size=1000)
    set_timestamp(request.created_after, since)
    while True:
        page = await suite.users.ListUsers(request)
        for user in page.users:
            if user.email in by_email:
                by_email[user.email].user_id = user.id
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token


async def _refresh(suite: Suite, catalog: Catalog) -> dict[str, int]:
    members = {}
    for name, segment_id in catalog.segments.items():
        reply = await suite.segments.RefreshSegment(
            segments_pb2.RefreshSegmentRequest(segment_id=segment_id)
        )
        members[name] = int(reply.member_count)
    return members


def _progress(day: Day, days: int) -> None:
    done = int(BAR_WIDTH * (day.number + 1) / days)
    events = len(day.happenings)
    sys.stdout.write(
        f"\r[{'#' * done}{'.' * (BAR_WIDTH - done)}] day {day.number + 1}/{days}"
        f"  {day.date:%Y-%m-%d}  new users {len(day.signups):>5,}  events {events:>6,}"
    )
    sys.stdout.flush()


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
