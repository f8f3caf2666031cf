"""compose.yaml: its settings load with runtime/config.py, agree with the
README's tables, and wire the services to each other, the database and the
collector as the services, the migrations and the collector expect."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from runtime.config import DEFAULT_PORTS, SERVICE_NAMES, ServiceConfig, load_service_config
from runtime.tls import spiffe_id
from suite.certificates import local_certificates
from tests.deploy.project import REPO, documented_ports, documented_settings
from tests.support import ScratchDatabase, free_port, running, service_env

Service = dict[str, Any]


@cache
def compose() -> dict[str, Service]:
    services: dict[str, Service] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    return services


def tls_volume() -> tuple[str, str]:
    """The volume the `tls` service writes the certificates into, and where."""
    [mount] = compose()["tls"]["volumes"]
    volume, path = mount.split(":")
    return volume, path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the `tls` service's command writes into its volume, run here."""
    folder = tmp_path_factory.mktemp("compose-tls")
    command = compose()["tls"]["command"]
    assert command[:2] == ["tls", "init"] and command[2] == "--dir"
    assert command[3] == tls_volume()[1]
    subprocess.run(
        [sys.executable, "-m", "suite.cli", "tls", "init", "--dir", str(folder)],
        check=True,
        capture_output=True,
    )
    return folder


def compose_config(name: str, tls_files: Path) -> ServiceConfig:
    """The service's configuration as it loads in its container, where the `tls`
    volume is mounted (here: `tls_files`)."""
    _, path = tls_volume()
    env = {
        key: value.replace(path, str(tls_files), 1) if value.startswith(f"{path}/") else value
        for key, value in compose()[name]["environment"].items()
    }
    return load_service_config(name, env)


def host_and_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


def test_services_run_the_suites_image_with_their_command() -> None:
    services = compose()
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("migrate", "tls", *SERVICE_NAMES):
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


def test_service_settings_are_the_readmes(tls_files: Path) -> None:
    services = compose()
    ports = documented_ports()
    for name in SERVICE_NAMES:
        env = services[name]["environment"]
        assert set(env) <= documented_settings(), set(env) - documented_settings()
        config = compose_config(name, tls_files)
        assert config.host == "0.0.0.0"
        assert config.port == ports[name] == DEFAULT_PORTS[name]
        assert services[name]["ports"] == [f"127.0.0.1:{config.port}:{config.port}"]
        for peer, address in config.peers.items():
            assert address.startswith("dns:///"), address
            assert host_and_port(address.removeprefix("dns:///")) == (peer, ports[peer])
        assert config.telemetry.service_name == f"lifecycle-{name}"


def test_services_connect_with_the_roles_the_migrations_make(tls_files: Path) -> None:
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
        url = compose_config(name, tls_files).database_url
        # The migrations give the role the password in this very URL.
        assert url == migrate_env[f"LIFECYCLE_{name.upper()}_DATABASE_URL"]
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, admin.path)
        assert parts.password, f"{name} has no password"
        roles.add(parts.username)
    assert len(roles) == len(SERVICE_NAMES), "each service has a role of its own"


def test_traces_go_through_the_collector_to_jaeger(tls_files: Path) -> None:
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
        endpoint = compose_config(name, tls_files).telemetry.otlp_endpoint
        assert endpoint is not None
        host, port = host_and_port(endpoint)
        assert host == "otel-collector" and receiver.endswith(f":{port}")


async def health_check(env: dict[str, str]) -> int:
    """Runs compose.yaml's health check of the services, as Docker would in the container."""
    command = compose()["users"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", command[3], env=env)
    return await process.wait()


async def test_the_health_check_tells_a_serving_service(
    database: ScratchDatabase, tls_files: Path
) -> None:
    """Over the plaintext health port, while the service serves mutual TLS."""
    port = free_port()
    container_env = {"LIFECYCLE_HEALTH_PORT": str(port)}
    assert await health_check(container_env) != 0, "nothing listens yet"
    tls = local_certificates(tls_files).environment("users")
    env = service_env(database, {"users": free_port()}, **tls, LIFECYCLE_HEALTH_PORT=str(port))
    async with running("users", env):
        assert await health_check(container_env) == 0


def test_services_serve_mutual_tls_with_the_certificates_the_tls_service_makes(
    tls_files: Path,
) -> None:
    """Each service mounts the `tls` volume once it is made, and serves with a
    certificate that names it as its peers dial it."""
    services = compose()
    volume, path = tls_volume()
    assert volume in yaml.safe_load((REPO / "compose.yaml").read_text())["volumes"]
    for name in SERVICE_NAMES:
        assert services[name]["volumes"] == [f"{volume}:{path}:ro"]
        assert services[name]["depends_on"]["tls"] == {
            "condition": "service_completed_successfully"
        }
        config = compose_config(name, tls_files)
        assert config.tls is not None and config.tls.client_auth
        assert config.tls.cert_file is not None and config.health_port is not None
        certificate = x509.load_pem_x509_certificate(config.tls.cert_file.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id(name)]
        for peer in SERVICE_NAMES:
            host, _ = host_and_port(
                compose_config(peer, tls_files).peers[name].removeprefix("dns:///")
            )
            assert host in names.get_values_for_type(x509.DNSName), (peer, name)
