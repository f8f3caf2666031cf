"""The console as compose.yaml and the Kubernetes base run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from console.config import load_console_config
from suite.certificates import kept_certificates
from tests.deploy.project import REPO


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What compose's `tls` service makes in its volume, made here."""
    folder = tmp_path_factory.mktemp("compose-tls")
    kept_certificates(folder)
    return folder


def test_compose_publishes_the_console_on_the_hosts_loopback_only(tls_folder: Path) -> None:
    console = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["console"]
    assert console["command"] == ["serve", "console"]
    [mount] = console["volumes"]
    volume_path = mount.split(":")[1]
    env = {k: v.replace(volume_path, str(tls_folder)) for k, v in console["environment"].items()}
    config = load_console_config(env)
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    assert console["ports"] == ["127.0.0.1:8080:8080"]
    for name, address in config.addresses.items():
        assert address.startswith(f"dns:///{name}:"), address
    assert config.tls is not None and config.tls.cert_file is not None
    assert config.tls.cert_file.name == "client.pem"


def test_the_kubernetes_console_is_a_client_probed_over_http() -> None:
    objects = {d["kind"]: d for d in _documents(REPO / "deploy/k8s/base/console.yaml")}
    pod = objects["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["lifecycle-ops/client"] == "true"
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["serve", "console"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["LIFECYCLE_CONSOLE_PORT"])
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert "console.yaml" in (REPO / "deploy/k8s/base/kustomization.yaml").read_text()
