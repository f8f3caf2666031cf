"""deploy/k8s, rendered offline for each overlay as `kubectl apply -k` would
apply it: valid for Kubernetes, and consistent with itself, the code and the
architecture."""

from __future__ import annotations

import ast
import copy
import filecmp
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from runtime.config import (
    DEFAULT_PORTS,
    SERVICE_NAMES,
    TLS_VARIABLES,
    ConfigError,
    ServiceConfig,
    load_service_config,
)
from runtime.server import LIVENESS
from runtime.tls import spiffe_id
from services.metrics.settings import load_settings
from suite.certificates import Authority, subject_alternative_name
from suite.registry import DIRECT_CALLS, calls
from tests.deploy.netpol import Pod, allows, can_connect
from tests.deploy.project import REPO, architecture_calls, documented_files, documented_settings
from tests.deploy.rendering import Manifest, containers, image_name_and_tag, pod_specs, render

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes the manifests can run on (gRPC probes went GA in 1.27,
# KEP-2727) and the newest the validator knows: a field missing from either fails.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
CUSTOM_RESOURCES = {"PostgresCluster", "Certificate", "Issuer"}
# The keys cert-manager writes in a certificate's Secret.
CERTIFICATE_KEYS = {"tls.crt", "tls.key", "ca.crt"}
DATABASE_PORT = 5432
OTLP_PORT = 4317
HTTPS_PORT = 443
# The keys of the page tokens, one Secret per service, made by whoever installs
# (docs/operations.md, "Secrets"): never in git, in either overlay.
PAGE_TOKEN_SECRETS = {f"{s}-secrets" for s in SERVICE_NAMES}
# Secrets production provisions itself (docs/operations.md, "Secrets").
PROVISIONED_SECRETS = PAGE_TOKEN_SECRETS | {"lifecycle-db-pgbackrest-s3"}
# Secrets a workload reads when they exist (docs/operations.md, "Secrets").
OPTIONAL_SECRETS = {"lifecycle-metrics-archive-s3"}
# Connections the pools leave for migrations, maintenance, replication and backups.
RESERVED_CONNECTIONS = 20
# The overlay docs/operations.md shows in full, on top of prod.
DOCUMENTED_OVERLAY = "deploy/k8s/overlays/yours/"
# An address outside the cluster, such as a bucket's or a trace vendor's.
OUTSIDE = Pod({}, "", outside_cluster=True)


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    """The overlay as `kubectl kustomize` renders it, once a session."""
    return render(K8S / "overlays" / overlay)


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return rendered(request.param)


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def workloads(manifests: tuple[Manifest, ...]) -> Iterator[Manifest]:
    return (m for m in manifests if m["kind"] in ("Deployment", "Job", "CronJob"))


def pod_labels(workload: Manifest) -> dict[str, str]:
    template = workload["spec"]
    if workload["kind"] == "CronJob":
        template = template["jobTemplate"]["spec"]
    labels: dict[str, str] = template["template"]["metadata"]["labels"]
    return labels


def service_container(deployment: Manifest) -> dict[str, Any]:
    [container] = containers(deployment)
    return container


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A container's port, by number or by name; fails when the container has none such."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"container {container['name']} has no port {port}")


def resolved_env(manifests: tuple[Manifest, ...], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, ConfigMaps read; a Secret's value stands as
    secret:<name>/<key>, except the database URLs, which stand as a URL with
    the operator's user so that the configuration can be loaded. A whole
    Secret's keys (envFrom) are not known offline: they are left out."""
    config_maps = of_kind(manifests, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        env[entry["name"]] = (
            f"postgresql://{ref['name']}@lifecycle-db-primary:5432/lifecycle"
            if ref["key"] == "uri"
            else f"secret:{ref['name']}/{ref['key']}"
        )
    return env


def test_the_generated_manifests_are_fresh(tmp_path: Path) -> None:
    out, overlays = tmp_path / "generated", tmp_path / "overlays"
    subprocess.run(
        [sys.executable, K8S / "generate.py", "--out", out, "--overlays-out", overlays],
        check=True,
        capture_output=True,
    )
    committed = K8S / "base" / "generated"
    fresh = sorted(p.name for p in out.iterdir())
    assert fresh == sorted(p.name for p in committed.iterdir()), "run `make manifests`"
    stale = [name for name in fresh if not filecmp.cmp(out / name, committed / name, False)]
    assert stale == [], f"run `make manifests`: stale {stale}"
    for overlay in OVERLAYS:
        names = Path(overlay) / "certificate-names.yaml"
        assert filecmp.cmp(overlays / names, K8S / "overlays" / names, False), (
            f"run `make manifests`: stale {names}"
        )


def assert_valid(manifests: tuple[Manifest, ...], version: str) -> None:
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            raise AssertionError(f"{name} on Kubernetes {version}: {error.message}") from error


@pytest.fixture(scope="session")
def secret_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files such as cert-manager writes in a certificate's Secret, to load the
    settings offline with."""
    folder = tmp_path_factory.mktemp("certificate")
    authority = Authority.create()
    certificate, key = authority.issue("users", subject_alternative_name("users"))
    (folder / "tls.crt").write_bytes(certificate)
    (folder / "tls.key").write_bytes(key)
    (folder / "ca.crt").write_bytes(authority.certificate.public_bytes(Encoding.PEM))
    return folder


def service_settings(
    manifests: tuple[Manifest, ...], name: str, secret_files: Path
) -> ServiceConfig:
    """A service's configuration as runtime/config.py loads it in its pod: a path
    under a mounted Secret reads `secret_files` instead."""
    deployment = of_kind(manifests, "Deployment")[name]
    container = service_container(deployment)
    [spec] = pod_specs(deployment)
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    env = resolved_env(manifests, container)
    for mount in container["volumeMounts"]:
        if mount["name"] not in secrets:
            continue
        for variable, value in env.items():
            if value.startswith(mount["mountPath"] + "/"):
                file = value.removeprefix(mount["mountPath"] + "/")
                assert file in CERTIFICATE_KEYS, (name, variable, value)
                env[variable] = str(secret_files / file)
    return load_service_config(name, env)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(manifests: tuple[Manifest, ...], version: str) -> None:
    assert_valid(manifests, version)


def test_the_validator_catches_a_misspelt_field() -> None:
    deployment = of_kind(rendered("prod"), "Deployment")["users"]
    container = dict(service_container(deployment))
    container["readinesProbe"] = container.pop("readinessProbe")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"] = [container]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_every_object_lands_in_the_overlay_namespace() -> None:
    for overlay, namespace in (("dev", "lifecycle-dev"), ("prod", "lifecycle")):
        assert {m["metadata"]["namespace"] for m in rendered(overlay)} == {namespace}


def test_each_service_has_its_objects(manifests: tuple[Manifest, ...]) -> None:
    for service in SERVICE_NAMES:
        for kind in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert service in of_kind(manifests, kind), f"{kind} {service}"
        assert service in of_kind(manifests, "ServiceAccount")
        assert f"{service}-config" in of_kind(manifests, "ConfigMap")
        services = of_kind(manifests, "Service")
        assert services[service]["spec"].get("clusterIP") != "None"
        assert services[f"{service}-headless"]["spec"]["clusterIP"] == "None"
    assert "lifecycle-migrate" in of_kind(manifests, "Job")
    assert "lifecycle-maintenance" in of_kind(manifests, "CronJob")


def test_selectors_match_the_pods_they_are_for(manifests: tuple[Manifest, ...]) -> None:
    deployments = of_kind(manifests, "Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(deployment).items(), name
    for name, service in of_kind(manifests, "Service").items():
        selected = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items() <= pod_labels(d).items()
        ]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
    for name, budget in of_kind(manifests, "PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector == deployments[name]["spec"]["selector"]["matchLabels"], name


def test_probe_and_service_ports_are_container_ports(manifests: tuple[Manifest, ...]) -> None:
    deployments = of_kind(manifests, "Deployment")
    for deployment in deployments.values():
        for container in containers(deployment):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    action = container[probe].get("grpc") or container[probe]["httpGet"]
                    container_port(container, action["port"])
    for name, service in of_kind(manifests, "Service").items():
        [target] = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items() <= pod_labels(d).items()
        ]
        for port in service["spec"]["ports"]:
            [container] = containers(target)
            assert container_port(container, port["targetPort"]) == port["port"], name


def test_services_probe_readiness_and_liveness_over_grpc(
    manifests: tuple[Manifest, ...], secret_files: Path
) -> None:
    """The kubelet's gRPC probe cannot do TLS: it asks the plaintext health port,
    which no Service exposes and no policy opens to other pods."""
    deployments = of_kind(manifests, "Deployment")
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    namespace = manifests[0]["metadata"]["namespace"]
    for service in SERVICE_NAMES:
        container = service_container(deployments[service])
        assert container["args"] == ["serve", service]
        config = service_settings(manifests, service, secret_files)
        assert config.tls is not None and config.health_port is not None
        assert container["readinessProbe"]["grpc"] == {"port": config.health_port, "service": ""}
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": config.health_port, "service": LIVENESS}
        assert container_port(container, "health") == config.health_port
        target = pod_of(deployments[service], namespace)
        client = Pod({"app": "debugging", "lifecycle-ops/client": "true"}, namespace)
        for source in (client, *(pod_of(d, namespace) for d in deployments.values())):
            assert not can_connect(policies, source, target, config.health_port), service
        exposed = {
            port["port"]
            for s in of_kind(manifests, "Service").values()
            if s["spec"]["selector"].items() <= pod_labels(deployments[service]).items()
            for port in s["spec"]["ports"]
        }
        assert exposed == {DEFAULT_PORTS[service]}


def test_autoscalers_and_budgets_target_existing_deployments(
    manifests: tuple[Manifest, ...],
) -> None:
    deployments = of_kind(manifests, "Deployment")
    autoscaled = set()
    for name, autoscaler in of_kind(manifests, "HorizontalPodAutoscaler").items():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment"), name
        assert target["name"] in deployments, name
        autoscaled.add(target["name"])
        minimum, maximum = autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
        assert 1 <= minimum <= maximum, name
        for metric in autoscaler["spec"]["metrics"]:
            resource = metric["resource"]["name"]
            for container in containers(deployments[target["name"]]):
                assert resource in container["resources"]["requests"], (name, resource)
    assert autoscaled == set(SERVICE_NAMES)
    for name in autoscaled:
        assert "replicas" not in deployments[name]["spec"], f"{name}: the HPA owns replicas"
    for name in of_kind(manifests, "PodDisruptionBudget"):
        assert name in deployments, name


def test_every_container_is_bounded_and_locked_down(manifests: tuple[Manifest, ...]) -> None:
    for workload in workloads(manifests):
        for spec in pod_specs(workload):
            assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"].get(bound, {}).keys(), where
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where


def test_services_read_the_documented_settings(
    manifests: tuple[Manifest, ...], secret_files: Path
) -> None:
    """Each service's environment loads with runtime/config.py, names only
    variables of the README's table, and points at real peers and the database."""
    deployments = of_kind(manifests, "Deployment")
    services = of_kind(manifests, "Service")
    for name in SERVICE_NAMES:
        container = service_container(deployments[name])
        env = resolved_env(manifests, container)
        assert set(env) <= documented_settings(), set(env) - documented_settings()
        config = service_settings(manifests, name, secret_files)
        assert config.host == "0.0.0.0"
        assert config.port == container_port(container, "grpc") == DEFAULT_PORTS[name]
        assert urlsplit(config.database_url).username == f"lifecycle-db-pguser-lifecycle-{name}"
        grace = config.drain_delay + config.shutdown_grace
        assert deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
            grace
        )
        for peer, address in config.peers.items():
            host, port = address.removeprefix("dns:///").rsplit(":", 1)
            assert address.startswith("dns:///"), address
            assert host == f"{peer}-headless", address
            assert services[host]["spec"]["clusterIP"] == "None"
            assert [p["port"] for p in services[host]["spec"]["ports"]] == [int(port)]
            assert int(port) == DEFAULT_PORTS[peer]


def test_every_service_exports_its_traces_to_the_collector(
    manifests: tuple[Manifest, ...], secret_files: Path
) -> None:
    deployments = of_kind(manifests, "Deployment")
    collector_service = of_kind(manifests, "Service")["otel-collector"]
    [collector_port] = collector_service["spec"]["ports"]
    collector_config = yaml.safe_load(
        of_kind(manifests, "ConfigMap")["otel-collector-config"]["data"]["config.yaml"]
    )
    receiver = collector_config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    [collector] = containers(deployments["otel-collector"])
    assert receiver.endswith(f":{container_port(collector, collector_port['targetPort'])}")
    assert "otlp" in collector_config["service"]["pipelines"]["traces"]["receivers"]
    for name in SERVICE_NAMES:
        env = resolved_env(manifests, service_container(deployments[name]))
        assert env["OTEL_SERVICE_NAME"] == f"lifecycle-{name}"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{OTLP_PORT}"
        assert collector_port["port"] == OTLP_PORT
        telemetry = service_settings(manifests, name, secret_files).telemetry
        assert telemetry.otlp_endpoint == env["OTEL_EXPORTER_OTLP_ENDPOINT"]


def operator_secrets(manifests: tuple[Manifest, ...]) -> set[str]:
    """The Secrets the Postgres operator makes: one per user of the cluster."""
    [cluster] = of_kind(manifests, "PostgresCluster").values()
    name = cluster["metadata"]["name"]
    return {f"{name}-pguser-{user['name']}" for user in cluster["spec"]["users"]}


def secret_references(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every reference to a Secret in the container's environment: single keys and whole Secrets."""
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            yield entry["valueFrom"]["secretKeyRef"]
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            yield source["secretRef"]


def referenced_secrets(manifests: tuple[Manifest, ...], *, optional: bool = False) -> set[str]:
    """The Secrets the workloads need, or (`optional`) those they read only when present."""
    names = set()
    for workload in workloads(manifests):
        for container in containers(workload):
            names |= {
                reference["name"]
                for reference in secret_references(container)
                if reference.get("optional", False) == optional
            }
    if optional:
        return names
    [cluster] = of_kind(manifests, "PostgresCluster").values()
    for source in cluster["spec"]["backups"]["pgbackrest"].get("configuration", []):
        names.add(source["secret"]["name"])
    return names


def test_every_secret_exists_or_is_provisioned() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    dev_missing = referenced_secrets(dev) - set(of_kind(dev, "Secret")) - operator_secrets(dev)
    assert dev_missing == PAGE_TOKEN_SECRETS
    prod_missing = referenced_secrets(prod) - set(of_kind(prod, "Secret"))
    assert prod_missing - operator_secrets(prod) == PROVISIONED_SECRETS
    for manifests in (dev, prod):
        assert referenced_secrets(manifests, optional=True) == OPTIONAL_SECRETS
    operations = (REPO / "docs" / "operations.md").read_text()
    for name in ("<service>-secrets", "lifecycle-db-pgbackrest-s3", *OPTIONAL_SECRETS):
        assert f"`{name}`" in operations, f"docs/operations.md does not say how to make {name}"


def test_the_page_token_key_comes_from_a_secret_that_is_not_committed() -> None:
    committed = [
        path.relative_to(REPO)
        for path in K8S.rglob("*.yaml")
        if "LIFECYCLE_PAGE_TOKEN_SECRET:" in path.read_text()
    ]
    assert committed == [], "a page-token key is committed"
    for overlay in OVERLAYS:
        manifests = rendered(overlay)
        deployments = of_kind(manifests, "Deployment")
        for name in SERVICE_NAMES:
            container = service_container(deployments[name])
            [key] = [e for e in container["env"] if e["name"] == "LIFECYCLE_PAGE_TOKEN_SECRET"]
            assert key["valueFrom"]["secretKeyRef"] == {
                "name": f"{name}-secrets",
                "key": "LIFECYCLE_PAGE_TOKEN_SECRET",
            }
            assert f"{name}-secrets" not in of_kind(manifests, "Secret")


def test_each_service_has_a_database_role_of_its_own(manifests: tuple[Manifest, ...]) -> None:
    deployments = of_kind(manifests, "Deployment")
    [cluster] = of_kind(manifests, "PostgresCluster").values()
    users = {user["name"]: user for user in cluster["spec"]["users"]}
    seen = set()
    for name in SERVICE_NAMES:
        [url] = [
            e["valueFrom"]["secretKeyRef"]
            for e in service_container(deployments[name])["env"]
            if e["name"] == f"LIFECYCLE_{name.upper()}_DATABASE_URL"
        ]
        role = url["name"].removeprefix(f"{cluster['metadata']['name']}-pguser-")
        assert users[role]["databases"] == ["lifecycle"]
        assert "SUPERUSER" not in users[role].get("options", "")
        seen.add(role)
    assert len(seen) == len(SERVICE_NAMES)
    migrate = of_kind(manifests, "Job")["lifecycle-migrate"]
    [container] = containers(migrate)
    env = resolved_env(manifests, container)
    assert set(env) == {"LIFECYCLE_DATABASE_URL"} | {
        f"LIFECYCLE_{s.upper()}_DATABASE_URL" for s in SERVICE_NAMES
    }
    assert container["args"] == ["migrate"]


def test_the_database_keeps_the_designed_backup_policy(manifests: tuple[Manifest, ...]) -> None:
    """The operator's resource cannot be schema-checked offline: its key fields are
    checked here. docs/operations.md explains each."""
    [cluster] = of_kind(manifests, "PostgresCluster").values()
    assert cluster["apiVersion"] == "postgres-operator.crunchydata.com/v1beta1"
    spec = cluster["spec"]
    assert spec["postgresVersion"] >= 14
    assert all(instance["replicas"] >= 1 for instance in spec["instances"])
    pgbackrest = spec["backups"]["pgbackrest"]
    assert pgbackrest["global"] == {
        "repo1-retention-full-type": "time",
        "repo1-retention-full": "90",
        "repo1-retention-archive-type": "full",
        # The newest of the 31 fulls is today's: WAL reaches back 30 days.
        "repo1-retention-archive": "31",
        "repo1-bundle": "y",
        "repo1-block": "y",
    }
    [repo] = pgbackrest["repos"]
    assert repo["name"] == "repo1"
    assert repo["schedules"] == {"full": "0 2 * * *", "incremental": "0 8,14,20 * * *"}
    full_hours = {int(repo["schedules"]["full"].split()[1])}
    incremental_hours = {int(h) for h in repo["schedules"]["incremental"].split()[1].split(",")}
    assert sorted(full_hours | incremental_hours) == list(range(2, 24, 6)), "every 6 hours"
    assert ("s3" in repo) != ("volume" in repo), "one storage per repository"
    parameters = spec["patroni"]["dynamicConfiguration"]["postgresql"]["parameters"]
    assert int(parameters["archive_timeout"]) <= 60


def surge(deployment: Manifest, replicas: int) -> int:
    """The pods a rollout adds to `replicas` (a percentage rounds up, as Kubernetes does)."""
    value = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    if isinstance(value, str):
        return math.ceil(replicas * int(value.removesuffix("%")) / 100)
    pods: int = value
    return pods


def test_surges_count_as_kubernetes_counts_them() -> None:
    def rolling(max_surge: int | str) -> Manifest:
        return {"spec": {"strategy": {"rollingUpdate": {"maxSurge": max_surge}}}}

    assert [surge(rolling("25%"), replicas) for replicas in (1, 4, 6, 8)] == [1, 1, 2, 2]
    assert surge(rolling(1), 8) == 1


def test_the_database_takes_every_pool_of_a_rollout_at_full_scale(
    manifests: tuple[Manifest, ...],
) -> None:
    """Every pod a rollout at full scale runs holds a full pool: as many as the
    autoscaler allows, the surge the rollout adds, and an old pod still
    draining, which the Deployment no longer counts. A few connections stay
    for the migrations, maintenance, replication and backups."""
    config_maps = of_kind(manifests, "ConfigMap")
    autoscalers = of_kind(manifests, "HorizontalPodAutoscaler")
    deployments = of_kind(manifests, "Deployment")
    demand = 0
    for name in SERVICE_NAMES:
        replicas = autoscalers[name]["spec"]["maxReplicas"]
        pods = replicas + surge(deployments[name], replicas) + 1
        demand += pods * int(config_maps[f"{name}-config"]["data"]["LIFECYCLE_DB_POOL_SIZE"])
    [cluster] = of_kind(manifests, "PostgresCluster").values()
    parameters = cluster["spec"]["patroni"]["dynamicConfiguration"]["postgresql"]["parameters"]
    assert demand + RESERVED_CONNECTIONS <= int(parameters["max_connections"]), demand


def test_production_backs_up_to_object_storage() -> None:
    [cluster] = of_kind(rendered("prod"), "PostgresCluster").values()
    [repo] = cluster["spec"]["backups"]["pgbackrest"]["repos"]
    assert {"bucket", "endpoint", "region"} <= repo["s3"].keys()
    assert cluster["spec"]["instances"][0]["replicas"] >= 2


def pod_of(workload: Manifest, namespace: str) -> Pod:
    return Pod(pod_labels(workload), namespace)


def allowed_calls(manifests: tuple[Manifest, ...]) -> set[tuple[str, str]]:
    """(caller, callee) for every pair of services the policies let connect."""
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    namespace = manifests[0]["metadata"]["namespace"]
    deployments = of_kind(manifests, "Deployment")
    return {
        (caller, callee)
        for caller in SERVICE_NAMES
        for callee in SERVICE_NAMES
        if caller != callee
        and can_connect(
            policies,
            pod_of(deployments[caller], namespace),
            pod_of(deployments[callee], namespace),
            DEFAULT_PORTS[callee],
        )
    }


def test_the_network_allows_exactly_the_architectures_calls(
    manifests: tuple[Manifest, ...],
) -> None:
    expected, allowed = architecture_calls(), allowed_calls(manifests)
    assert allowed == expected, f"missing {expected - allowed}, extra {allowed - expected}"


def test_each_side_allows_only_the_architectures_calls(manifests: tuple[Manifest, ...]) -> None:
    """Each direction on its own: a service's egress reaches only what it calls
    (a broad egress rule fails here even while the callee's ingress would
    refuse), and its ingress admits, of the suite, only its callers."""
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    namespace = manifests[0]["metadata"]["namespace"]
    deployments = of_kind(manifests, "Deployment")
    expected = architecture_calls()
    stranger = Pod({"app": "something-else"}, namespace)
    elsewhere = Pod({"app": "something-else"}, "other-team", {"lifecycle-ops/client": "true"})
    ports = (*DEFAULT_PORTS.values(), HTTPS_PORT)
    for caller in SERVICE_NAMES:
        source = pod_of(deployments[caller], namespace)
        for callee in SERVICE_NAMES:
            if callee == caller:
                continue
            target, port = pod_of(deployments[callee], namespace), DEFAULT_PORTS[callee]
            wanted = (caller, callee) in expected
            out = allows(policies, source, target, port, "TCP", "Egress")
            into = allows(policies, target, source, port, "TCP", "Ingress")
            assert (out, into) == (wanted, wanted), (caller, callee)
        for outsider in (stranger, elsewhere, OUTSIDE):
            for port in ports:
                assert not allows(policies, source, outsider, port, "TCP", "Egress"), (caller, port)
        assert not allows(policies, source, stranger, DEFAULT_PORTS[caller], "TCP", "Ingress")
    for job in ("lifecycle-migrate", "lifecycle-maintenance"):
        [workload] = (w for w in workloads(manifests) if w["metadata"]["name"] == job)
        source = pod_of(workload, namespace)
        for name in SERVICE_NAMES:
            target = pod_of(deployments[name], namespace)
            assert not allows(policies, source, target, DEFAULT_PORTS[name], "TCP", "Egress")
        for port in ports:
            assert not allows(policies, source, OUTSIDE, port, "TCP", "Egress"), (job, port)


def channels_opened(folder: Path) -> set[str]:
    """The peers the code under `folder` opens channels to. A service reaches a
    peer only through `ServiceClients.channel("<peer>")`, the peer named as
    it is, or through a typed client of `clients/` that does so: a computed
    name, or a channel made by hand, fails."""
    peers = set()
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text())
        peers |= _channels_in(tree, f"{path.relative_to(folder.parent)}")
        for client in _clients_imported(tree):
            module = REPO / "clients" / f"{client}.py"
            peers |= _channels_in(ast.parse(module.read_text()), f"clients/{client}.py")
    return peers


def _clients_imported(tree: ast.Module) -> set[str]:
    """The modules of `clients/` that a module imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clients."):
            names.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("clients.")}
    return names


def _channels_in(tree: ast.Module, source: str) -> set[str]:
    peers = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        where = f"{source}:{node.lineno}"
        assert node.func.attr not in ("insecure_channel", "secure_channel"), (
            f"{where}: use ServiceClients.channel"
        )
        if node.func.attr == "channel":
            [peer] = node.args
            assert isinstance(peer, ast.Constant) and isinstance(peer.value, str), (
                f"{where}: name the peer as it is"
            )
            peers.add(peer.value)
    return peers


def test_every_call_the_code_makes_is_declared_and_in_the_architecture() -> None:
    """The direct calls the registry declares are the channels each service's code
    opens; with the outbox destinations they are the architecture's calls, no more."""
    for name in SERVICE_NAMES:
        assert channels_opened(REPO / "services" / name) == DIRECT_CALLS[name], name
    declared = {(caller, callee) for caller in SERVICE_NAMES for callee in calls(caller)}
    assert declared == architecture_calls()


def test_the_call_finder_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    service = tmp_path / "service"
    service.mkdir()
    (service / "named.py").write_text('stub = Stub(clients.channel("users"))\n')
    assert channels_opened(service) == {"users"}
    (service / "named.py").write_text("from clients.users import UsersClient\n")
    assert channels_opened(service) == {"users"}, "through the typed client"
    (service / "computed.py").write_text("stub = Stub(clients.channel(peer))\n")
    with pytest.raises(AssertionError, match="name the peer"):
        channels_opened(service)
    (service / "computed.py").write_text('channel = grpc.aio.insecure_channel("users:50051")\n')
    with pytest.raises(AssertionError, match=r"use ServiceClients\.channel"):
        channels_opened(service)


def test_the_network_allows_the_infrastructure_and_nothing_else(
    manifests: tuple[Manifest, ...],
) -> None:
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    namespace = manifests[0]["metadata"]["namespace"]
    deployments = of_kind(manifests, "Deployment")
    database = Pod({"postgres-operator.crunchydata.com/cluster": "lifecycle-db"}, namespace)
    dns = Pod({"k8s-app": "kube-dns"}, "kube-system")
    collector = pod_of(deployments["otel-collector"], namespace)
    migrate = pod_of(of_kind(manifests, "Job")["lifecycle-migrate"], namespace)
    maintenance = pod_of(of_kind(manifests, "CronJob")["lifecycle-maintenance"], namespace)
    stranger = Pod({"app": "something-else"}, namespace)
    elsewhere = Pod({"app": "something-else"}, "other-team")
    client = Pod({"app": "their-app"}, "their-team", {"lifecycle-ops/client": "true"})
    inside_client = Pod({"app": "debugging", "lifecycle-ops/client": "true"}, namespace)
    # `lifecycle demo` in a Job made from the maintenance CronJob (docs/operations.md).
    demo = Pod({**maintenance.labels, "lifecycle-ops/client": "true"}, namespace)
    assert can_connect(policies, demo, database, DATABASE_PORT)
    for outsider in (inside_client, client):
        assert not can_connect(policies, outsider, database, DATABASE_PORT)
        assert not can_connect(policies, outsider, collector, OTLP_PORT)
    assert not can_connect(policies, inside_client, OUTSIDE, HTTPS_PORT)
    for job in (migrate, maintenance):
        assert can_connect(policies, job, database, DATABASE_PORT)
        assert can_connect(policies, job, dns, 53, "UDP")
        assert not can_connect(policies, job, collector, OTLP_PORT)
    for name in SERVICE_NAMES:
        service, port = pod_of(deployments[name], namespace), DEFAULT_PORTS[name]
        assert can_connect(policies, service, database, DATABASE_PORT), name
        assert not can_connect(policies, service, database, 8008), name
        assert can_connect(policies, service, dns, 53, "UDP"), name
        assert can_connect(policies, service, collector, OTLP_PORT), name
        for client_pod in (client, inside_client, demo):
            assert can_connect(policies, client_pod, service, port), (name, client_pod)
        for outsider in (stranger, elsewhere, database, collector, migrate, maintenance):
            assert not can_connect(policies, outsider, service, port), (name, outsider)
    assert not can_connect(policies, stranger, database, DATABASE_PORT)


def test_images_are_the_suite_and_pinned_third_parties(manifests: tuple[Manifest, ...]) -> None:
    for workload in workloads(manifests):
        for container in containers(workload):
            name, tag = image_name_and_tag(container["image"])
            assert tag and tag != "latest", container["image"]
            if workload["metadata"]["name"] in (*SERVICE_NAMES, "lifecycle-migrate"):
                assert name.endswith("lifecycle-ops"), container["image"]


def test_a_kustomization_kubectl_refuses_fails_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(pytest.fail.Exception, match=r"missing\.yaml"):
        render(tmp_path)


def test_without_kubectl_the_tests_fail_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match=r"kubernetes\.io/docs/tasks/tools"):
        render(K8S / "overlays" / "dev")


def test_image_references_split_into_name_and_tag() -> None:
    assert image_name_and_tag("lifecycle-ops") == ("lifecycle-ops", "")
    assert image_name_and_tag("registry:5000/lifecycle-ops") == ("registry:5000/lifecycle-ops", "")
    assert image_name_and_tag("registry:5000/x:1.2") == ("registry:5000/x", "1.2")


def test_maintenance_archives_where_its_config_map_says(manifests: tuple[Manifest, ...]) -> None:
    """By default on the archive volume; an overlay names a bucket in the ConfigMap,
    the operator's Secret (when there is one) adds its keys."""
    maintenance = of_kind(manifests, "CronJob")["lifecycle-maintenance"]
    [container] = containers(maintenance)
    settings = load_settings(resolved_env(manifests, container))
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == settings.archive_url]
    [spec] = pod_specs(maintenance)
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claims = of_kind(manifests, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert settings.archive_endpoint is None
    assert {"name": "lifecycle-metrics-archive-s3", "optional": True} in list(
        secret_references(container)
    )


def documented_overlay(folder: Path) -> tuple[Manifest, ...]:
    """The overlay docs/operations.md shows (archives in a bucket, traces to a
    vendor), written where it says, beside prod in a copy of deploy/k8s, rendered."""
    files = documented_files(DOCUMENTED_OVERLAY)
    assert "../prod" in yaml.safe_load(files["kustomization.yaml"])["resources"]
    k8s = folder / "k8s"
    shutil.copytree(K8S, k8s, ignore=shutil.ignore_patterns("__pycache__", "yours"))
    yours = k8s / Path(DOCUMENTED_OVERLAY).relative_to("deploy/k8s")
    yours.mkdir()
    for name, text in files.items():
        (yours / name).write_text(text)
    return render(yours)


def test_the_documented_overlay_archives_to_a_bucket_and_traces_to_a_vendor(
    tmp_path: Path,
) -> None:
    manifests = documented_overlay(tmp_path)
    assert {m["metadata"].get("namespace") for m in manifests} == {"lifecycle"}
    for version in KUBERNETES_VERSIONS:
        assert_valid(manifests, version)
    maintenance = of_kind(manifests, "CronJob")["lifecycle-maintenance"]
    [container] = containers(maintenance)
    env = resolved_env(manifests, container)
    assert load_settings(env).archive_url.startswith("s3://")
    assert env["AWS_DEFAULT_REGION"]
    backend = of_kind(manifests, "ConfigMap")["otel-collector-backend"]["data"]
    assert backend["TRACE_BACKEND_ENDPOINT"].endswith(f":{HTTPS_PORT}")
    assert backend["TRACE_BACKEND_INSECURE"] == "false"

    namespace = manifests[0]["metadata"]["namespace"]
    deployments = of_kind(manifests, "Deployment")
    collector = pod_of(deployments["otel-collector"], namespace)
    base_policies = list(of_kind(rendered("prod"), "NetworkPolicy").values())
    for pod in (collector, pod_of(maintenance, namespace)):
        assert not can_connect(base_policies, pod, OUTSIDE, HTTPS_PORT), "prod is already open"
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    for pod in (collector, pod_of(maintenance, namespace)):
        assert can_connect(policies, pod, OUTSIDE, HTTPS_PORT), pod
        assert not can_connect(policies, pod, OUTSIDE, DATABASE_PORT), pod
    migrate = pod_of(of_kind(manifests, "Job")["lifecycle-migrate"], namespace)
    for name in SERVICE_NAMES:
        service = pod_of(deployments[name], namespace)
        assert not can_connect(policies, service, OUTSIDE, HTTPS_PORT), name
        assert not can_connect(policies, collector, service, DEFAULT_PORTS[name]), name
    assert not can_connect(policies, migrate, OUTSIDE, HTTPS_PORT)
    assert allowed_calls(manifests) == architecture_calls()


def test_each_service_has_a_certificate_naming_it_mounted_where_its_settings_say(
    manifests: tuple[Manifest, ...], secret_files: Path
) -> None:
    """cert-manager makes each service's certificate into a Secret of its own,
    mounted in its pods, with the names its callers dial (its Services, in
    the namespace's forms too) and its SPIFFE id (runtime.tls.peer_service);
    the settings name the files of that Secret."""
    certificates = of_kind(manifests, "Certificate")
    deployments = of_kind(manifests, "Deployment")
    services = of_kind(manifests, "Service")
    namespace = manifests[0]["metadata"]["namespace"]
    for name in SERVICE_NAMES:
        spec = certificates[name]["spec"]
        assert spec["uris"] == [spiffe_id(name)]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
        dialled = {
            f"{service}{suffix}"
            for service in (name, f"{name}-headless")
            for suffix in (
                "",
                f".{namespace}",
                f".{namespace}.svc",
                f".{namespace}.svc.cluster.local",
            )
        }
        assert set(spec["dnsNames"]) == dialled
        assert {s for s in services if s in (name, f"{name}-headless")} == {
            n for n in spec["dnsNames"] if "." not in n
        }
        for peer in SERVICE_NAMES:
            config = service_settings(manifests, peer, secret_files)
            host = config.peers[name].removeprefix("dns:///").rsplit(":", 1)[0]
            assert host in spec["dnsNames"], (peer, name)
        container = service_container(deployments[name])
        [spec_of_pod] = pod_specs(deployments[name])
        [volume] = [v for v in spec_of_pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == spec["secretName"] == f"{name}-tls"
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True and "subPath" not in mount, "renewals reach the pod"
        env = resolved_env(manifests, container)
        assert {env[TLS_VARIABLES[f]] for f in TLS_VARIABLES} == {
            f"{mount['mountPath']}/{key}" for key in CERTIFICATE_KEYS
        }
        config = service_settings(manifests, name, secret_files)
        assert config.tls is not None and config.tls.cert_file == secret_files / "tls.crt"


def issuer_of(manifests: tuple[Manifest, ...], certificate: Manifest) -> Manifest | None:
    reference = certificate["spec"]["issuerRef"]
    assert reference["group"] == "cert-manager.io"
    return of_kind(manifests, reference["kind"]).get(reference["name"])


def test_development_makes_its_own_ca_and_production_names_the_organisations() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    for name in SERVICE_NAMES:
        issuer = issuer_of(dev, of_kind(dev, "Certificate")[name])
        assert issuer is not None and "ca" in issuer["spec"]
        [authority] = [
            c
            for c in of_kind(dev, "Certificate").values()
            if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
        ]
        assert authority["spec"]["isCA"] is True
        root = issuer_of(dev, authority)
        assert root is not None and root["spec"] == {"selfSigned": {}}
        reference = of_kind(prod, "Certificate")[name]["spec"]["issuerRef"]
        assert reference["kind"] == "ClusterIssuer", "the organisation's issuer"
    assert of_kind(prod, "Issuer") == {}, "production issues nothing itself"
    operations = (REPO / "docs" / "operations.md").read_text()
    issuer = of_kind(prod, "Certificate")["users"]["spec"]["issuerRef"]["name"]
    assert f"`{issuer}`" in operations, "docs/operations.md says how to name the issuer"


def test_production_serves_mutual_tls_only_and_development_tls(secret_files: Path) -> None:
    for overlay, mutual in (("dev", False), ("prod", True)):
        manifests = rendered(overlay)
        for name in SERVICE_NAMES:
            config = service_settings(manifests, name, secret_files)
            assert config.tls is not None and config.tls.client_auth is mutual, (overlay, name)
    # Without client certificates production's services refuse to start.
    prod = copy.deepcopy(rendered("prod"))
    security = of_kind(prod, "ConfigMap")["lifecycle-security"]["data"]
    assert security["LIFECYCLE_REQUIRE_MUTUAL_TLS"] == "true"
    security["LIFECYCLE_TLS_CLIENT_AUTH"] = "none"
    with pytest.raises(ConfigError, match="LIFECYCLE_REQUIRE_MUTUAL_TLS"):
        service_settings(prod, "users", secret_files)


def test_production_authenticates_every_caller_and_development_does_not(
    secret_files: Path,
) -> None:
    for name in SERVICE_NAMES:
        assert service_settings(rendered("prod"), name, secret_files).auth.enabled, name
        assert not service_settings(rendered("dev"), name, secret_files).auth.enabled, name
    # Without a JWKS production's services refuse to start.
    prod = copy.deepcopy(rendered("prod"))
    security = of_kind(prod, "ConfigMap")["lifecycle-security"]["data"]
    del security["LIFECYCLE_AUTH_JWKS_URL"]
    with pytest.raises(ConfigError, match="LIFECYCLE_REQUIRE_AUTH"):
        service_settings(prod, "users", secret_files)
