"""compose.yaml: its settings load with runtime/config.py, agree with the
README's tables, and wire the services to each other, the database and the
collector as the services, the migrations and the collector expect."""

from __future__ import annotations

import asyncio
import sys
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import yaml

from runtime.config import DEFAULT_PORTS, SERVICE_NAMES, load_service_config
from tests.deploy.project import REPO, documented_ports, documented_settings
from tests.support import ScratchDatabase, free_port, running, service_env

Service = dict[str, Any]


@cache
def compose() -> dict[str, Service]:
    services: dict[str, Service] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    return services


def host_and_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


def test_services_run_the_suites_image_with_their_command() -> None:
    services = compose()
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("migrate", *SERVICE_NAMES):
        assert services[name]["build"] == "."
        assert services[name]["image"] == services["migrate"]["image"]
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
    for name in SERVICE_NAMES:
        assert services[name]["command"] == ["serve", name]
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_service_settings_are_the_readmes() -> None:
    services = compose()
    ports = documented_ports()
    for name in SERVICE_NAMES:
        env = services[name]["environment"]
        assert set(env) <= documented_settings(), set(env) - documented_settings()
        config = load_service_config(name, env)
        assert config.host == "0.0.0.0"
        assert config.port == ports[name] == DEFAULT_PORTS[name]
        assert services[name]["ports"] == [f"127.0.0.1:{config.port}:{config.port}"]
        for peer, address in config.peers.items():
            assert address.startswith("dns:///"), address
            assert host_and_port(address.removeprefix("dns:///")) == (peer, ports[peer])
        assert config.telemetry.service_name == f"lifecycle-{name}"


def test_services_connect_with_the_roles_the_migrations_make() -> None:
    services = compose()
    migrate_env = services["migrate"]["environment"]
    postgres = services["postgres"]["environment"]
    admin = urlsplit(migrate_env["LIFECYCLE_DATABASE_URL"])
    assert (admin.username, admin.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert admin.path == f"/{postgres['POSTGRES_DB']}"
    roles = set()
    for name in SERVICE_NAMES:
        url = load_service_config(name, services[name]["environment"]).database_url
        # The migrations give the role the password in this very URL.
        assert url == migrate_env[f"LIFECYCLE_{name.upper()}_DATABASE_URL"]
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, admin.path)
        assert parts.password, f"{name} has no password"
        roles.add(parts.username)
    assert len(roles) == len(SERVICE_NAMES), "each service has a role of its own"


def test_traces_go_through_the_collector_to_jaeger() -> None:
    services = compose()
    [mount] = services["otel-collector"]["volumes"]
    source, target, _ = mount.split(":")
    assert services["otel-collector"]["command"] == [f"--config={target}"]
    config = yaml.safe_load((REPO / source).read_text())
    receiver = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    pipeline = config["service"]["pipelines"]["traces"]
    [exporter] = pipeline["exporters"]
    assert host_and_port(config["exporters"][exporter]["endpoint"])[0] in services
    assert "jaeger" in services
    for name in SERVICE_NAMES:
        endpoint = load_service_config(name, services[name]["environment"]).telemetry.otlp_endpoint
        assert endpoint is not None
        host, port = host_and_port(endpoint)
        assert host == "otel-collector" and receiver.endswith(f":{port}")


async def health_check(env: dict[str, str]) -> int:
    """Runs compose.yaml's health check of the services, as Docker would in the container."""
    command = compose()["users"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", command[3], env=env)
    return await process.wait()


async def test_the_health_check_tells_a_serving_service(database: ScratchDatabase) -> None:
    port = free_port()
    container_env = {"LIFECYCLE_USERS_PORT": str(port)}
    assert await health_check(container_env) != 0, "nothing listens yet"
    async with running("users", service_env(database, {"users": port})):
        assert await health_check(container_env) == 0
