"""The `lifecycle` command.

lifecycle up                 the whole suite, each service in its own process
lifecycle serve <service>    one service (what a container runs)
lifecycle migrate            apply every service's migrations
lifecycle maintenance        create partitions ahead, expire idempotency keys
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime

import asyncpg
from opentelemetry import trace

from runtime import idempotency
from runtime.config import SERVICE_NAMES, ConfigError, load_service_config
from runtime.migrations import acting_as, migrate
from runtime.partitions import ensure_partitions
from runtime.server import ServiceHost
from runtime.telemetry import configure_logging, create_tracer_provider
from suite.database import create_database_if_missing, suite_database
from suite.launcher import Supervisor, child_environment
from suite.registry import DEFINITIONS, schema_owners

IDEMPOTENCY_KEY_DAYS = 7


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


def _up(services: list[str]) -> int:
    with suite_database() as admin_url:
        asyncio.run(_migrate(admin_url))
        return asyncio.run(Supervisor(services, child_environment(admin_url)).run())


def _serve(service: str) -> int:
    config = load_service_config(service)
    configure_logging(config.telemetry.service_name, config.log_level)
    provider = create_tracer_provider(config.telemetry)
    trace.set_tracer_provider(provider)
    try:
        asyncio.run(ServiceHost(DEFINITIONS[service], config, provider).serve())
    finally:
        provider.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lifecycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole suite")
    up.add_argument("services", nargs="*", choices=[*SERVICE_NAMES, []], help="only these services")
    serve = commands.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=SERVICE_NAMES)
    commands.add_parser("migrate", help="apply the migrations of every service")
    commands.add_parser(
        "maintenance", help="create partitions ahead and expire old idempotency keys"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "up":
            return _up(args.services or list(SERVICE_NAMES))
        if args.command == "serve":
            return _serve(args.service)
        with suite_database() as admin_url:
            action = _migrate if args.command == "migrate" else _maintenance
            asyncio.run(action(admin_url))
        return 0
    except ConfigError as error:
        print(f"lifecycle: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
