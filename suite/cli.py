"""The `lifecycle` command.

lifecycle up [--tls]         the whole suite, each service in its own process (mutual TLS)
lifecycle tls init [--dir D] a local CA and a certificate per service and for a client
lifecycle serve <service>    one service, or the console (what a container runs)
lifecycle migrate            apply every service's migrations
lifecycle maintenance        create partitions ahead, expire idempotency keys, retention
lifecycle outbox [retry]     every call waiting for another service; send dead letters again
lifecycle demo               a demo product: users, workflows, segments, triggers, weeks of events
lifecycle archive ...        archive old lifecycle events; list or restore archives (metrics)
lifecycle rollup ...         recompute daily metrics (metrics)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import trace

from console.config import CONSOLE
from console.serve import serve as serve_console
from runtime import idempotency
from runtime.config import (
    SERVICE_NAMES,
    ConfigError,
    database_name,
    load_service_config,
    with_database,
)
from runtime.errors import OperationFailed
from runtime.migrations import acting_as, migrate
from runtime.operations import Waiting, waiting_report
from runtime.outbox import retry_dead_letters
from runtime.partitions import ensure_partitions
from runtime.server import ServiceHost
from runtime.telemetry import configure_logging, create_tracer_provider
from suite.certificates import CLIENT, LocalCertificates, kept_certificates
from suite.database import (
    create_database_if_missing,
    data_dir,
    recreate_database,
    suite_database,
)
from suite.demo.run import DemoSettings, run_demo, suite_is_up
from suite.keys import local_auth
from suite.launcher import Supervisor, child_environment
from suite.registry import DEFINITIONS, schema_owners

IDEMPOTENCY_KEY_DAYS = 7
# In the data folder: the logs of the suite `lifecycle demo` starts (unless --verbose).
DEMO_LOG = "demo.log"


async def _migrate(admin_url: str) -> None:
    await create_database_if_missing(admin_url)
    applied = await migrate(admin_url, schema_owners(admin_url))
    logging.getLogger(__name__).info(
        "migrations: %d applied, the schema is up to date", len(applied)
    )


async def _maintenance(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        today = datetime.now(UTC).date()
        for definition, owner in zip(DEFINITIONS.values(), schema_owners(admin_url), strict=True):
            async with acting_as(conn, owner):
                for spec in owner.partitioned_tables:
                    for name in await ensure_partitions(conn, spec, today):
                        print(f"{owner.schema}: created partition {name}")
                expired = await idempotency.expire(conn, IDEMPOTENCY_KEY_DAYS)
                print(f"{owner.schema}: expired {expired} idempotency keys")
                if definition.maintenance is not None:
                    for line in await definition.maintenance(conn, today):
                        print(f"{owner.schema}: {line}")
    finally:
        await conn.close()


async def _outbox(admin_url: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(admin_url)
    waiting = 0
    try:
        for definition, owner in zip(DEFINITIONS.values(), schema_owners(admin_url), strict=True):
            if args.service and owner.schema != args.service:
                continue
            async with acting_as(conn, owner):
                if args.action == "retry":
                    moved = await retry_dead_letters(conn, args.topic)
                    print(f"{owner.schema}: {moved} dead letters sent again")
                for row in (await waiting_report(conn, definition.waiting)).rows:
                    waiting += 1
                    print(f"{owner.schema}: {_waiting_line(row)}")
    finally:
        await conn.close()
    if not waiting:
        print("nothing waiting")


def _waiting_line(row: Waiting) -> str:
    oldest = f", oldest {row.oldest}" if row.oldest else ""
    error = f", {row.last_error}" if row.last_error else ""
    return f"{row.kind} {row.topic}: {row.messages} messages{oldest}{error}"


async def _service_command(admin_url: str, args: argparse.Namespace) -> None:
    """A service's own subcommand, run as the service's role in its schema."""
    owner = next(o for o in schema_owners(admin_url) if o.schema == args.owner)
    conn = await asyncpg.connect(admin_url)
    try:
        async with acting_as(conn, owner):
            await args.run(conn, args)
    finally:
        await conn.close()


class _ServiceCommands:
    """The CLI's subparsers as a service sees them: what it adds runs as its role."""

    def __init__(self, subparsers: Any, service: str) -> None:
        self._subparsers = subparsers
        self._service = service

    def add_parser(self, *args: Any, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(*args, **kwargs)
        parser.set_defaults(owner=self._service)
        return parser


def _add_service_commands(commands: Any) -> None:
    for definition in DEFINITIONS.values():
        if definition.commands is not None:
            definition.commands(_ServiceCommands(commands, definition.name))


def _up(services: list[str], auth: bool, tls: bool) -> int:
    with suite_database() as admin_url:
        asyncio.run(_migrate(admin_url))
        certificates = kept_certificates() if tls else None
        env = child_environment(admin_url, certificates)
        if auth:
            env.update(local_auth(data_dir()).environment())
        return asyncio.run(Supervisor(services, env, certificates).run())


def _tls_init(folder: Path | None) -> int:
    """The local CA and certificates in `folder` (Docker Compose mounts them)."""
    certificates = kept_certificates(folder)
    print(
        f"{certificates.folder}: the CA (ca.pem), a certificate and key for each service"
        f" (<service>.pem, <service>-key.pem) and for a client ({CLIENT}.pem, {CLIENT}-key.pem)"
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    """Prints a token signed with the local key (`lifecycle up --auth` trusts it)."""
    permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
    print(local_auth(data_dir()).token(args.subject, permissions, _seconds(args.ttl)))
    return 0


def _seconds(text: str) -> float:
    """`90s`, `30m`, `1h`, `7d`, or a number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def _demo(args: argparse.Namespace) -> int:
    settings = DemoSettings(args.users, args.days, args.day_seconds, args.seed)
    certificates: LocalCertificates | None = kept_certificates() if args.tls else None
    with suite_database() as suite_url:
        demo_url = suite_url
        running = asyncio.run(suite_is_up(child_environment(suite_url, certificates)))
        if not running:
            # A suite of its own, on a database made afresh: the report shows
            # this run's product only, and the suite's own data is left alone.
            demo_url = with_database(suite_url, f"{database_name(suite_url)}_demo")
            asyncio.run(recreate_database(demo_url))
        asyncio.run(_migrate(demo_url))
        env = child_environment(demo_url, certificates)
        # The logs of a suite it starts; none is written when one runs (as in a Job).
        log_file = None if args.verbose or running else data_dir() / DEMO_LOG
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_bytes(b"")  # this run's logs only
        return asyncio.run(
            run_demo(
                demo_url,
                env,
                settings,
                start_suite=not running,
                certificates=certificates,
                log_file=log_file,
            )
        )


def _serve(service: str) -> int:
    if service == CONSOLE:
        serve_console()
        return 0
    config = load_service_config(service)
    configure_logging(config.telemetry.service_name, config.log_level)
    provider = create_tracer_provider(config.telemetry)
    trace.set_tracer_provider(provider)
    try:
        asyncio.run(ServiceHost(DEFINITIONS[service], config, provider).serve())
    finally:
        provider.shutdown()
    return 0


def _add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="set up a demo product and replay simulated weeks of its users' events"
    )
    demo.add_argument("--users", type=int, default=10_000, help="how many users sign up")
    demo.add_argument("--days", type=int, default=21, help="how many days are replayed")
    demo.add_argument("--day-seconds", type=float, default=1.0, help="wall time of a day")
    demo.add_argument("--seed", type=int, default=7, help="the simulation's random seed")
    demo.add_argument(
        "--tls", action="store_true", help="call (and start) the suite as `lifecycle up --tls` does"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help=f"the logs of a suite it starts on the terminal, not in the data folder's {DEMO_LOG}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lifecycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole suite")
    up.add_argument(
        "services", nargs="*", choices=[*SERVICE_NAMES, CONSOLE, []], help="only these services"
    )
    up.add_argument(
        "--auth",
        action="store_true",
        help="check bearer tokens, with local keys (`lifecycle token` mints them)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS, with a local CA and certificates kept in the data folder",
    )
    tls = commands.add_parser("tls", help="make a local CA and certificates (Docker Compose)")
    tls.add_argument("action", choices=("init",))
    tls.add_argument("--dir", type=Path, help="where (default: the data folder's tls/)")
    token = commands.add_parser(
        "token", help="mint a token for `lifecycle up --auth`, signed with the local key"
    )
    token.add_argument(
        "--permissions", default="*", help="comma-separated, e.g. users:read,events:track"
    )
    token.add_argument("--ttl", default="1h", help="how long it is valid: 90s, 30m, 1h, 7d")
    token.add_argument("--subject", default="developer", help="who it names (the actor)")
    serve = commands.add_parser("serve", help="run one service, or the console")
    serve.add_argument("service", choices=[*SERVICE_NAMES, CONSOLE])
    commands.add_parser("migrate", help="apply the migrations of every service")
    commands.add_parser(
        "maintenance", help="create partitions ahead, expire idempotency keys, retention"
    )
    outbox = commands.add_parser("outbox", help="what waits in the outboxes; retry dead letters")
    outbox.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    outbox.add_argument("--service", choices=SERVICE_NAMES, help="only this service")
    outbox.add_argument("--topic", help="retry: only this topic")
    _add_demo_command(commands)
    _add_service_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "up":
            return _up(args.services or [*SERVICE_NAMES, CONSOLE], args.auth, args.tls)
        if args.command == "tls":
            return _tls_init(args.dir)
        if args.command == "token":
            return _token(args)
        if args.command == "serve":
            return _serve(args.service)
        if args.command == "demo":
            return _demo(args)
        with suite_database() as admin_url:
            if args.command == "migrate":
                asyncio.run(_migrate(admin_url))
            elif args.command == "maintenance":
                asyncio.run(_maintenance(admin_url))
            elif args.command == "outbox":
                asyncio.run(_outbox(admin_url, args))
            else:
                asyncio.run(_service_command(admin_url, args))
        return 0
    except ConfigError as error:
        print(f"lifecycle: {error}", file=sys.stderr)
        return 2
    except (OperationFailed, ValueError) as error:
        print(f"lifecycle: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
