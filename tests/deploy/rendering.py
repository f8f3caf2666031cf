"""Kustomizations rendered by `kubectl kustomize`, the Kustomize built into
kubectl: what `kubectl apply -k` would apply, without a cluster. Without
kubectl the deploy tests fail rather than skip, saying how to install it.

Also what the tests read in a rendered workload: its pod specs and containers,
and the name and tag of an image reference.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

Manifest = dict[str, Any]

INSTALL_KUBECTL = (
    "the deploy tests render deploy/k8s with `kubectl kustomize` and kubectl is not on "
    "the PATH: install kubectl (it has Kustomize built in), "
    "https://kubernetes.io/docs/tasks/tools/"
)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(INSTALL_KUBECTL, pytrace=False)
    return path


def render(directory: Path) -> tuple[Manifest, ...]:
    """The objects `kubectl apply -k directory` would apply; fails the test with
    kubectl's message when it cannot render them."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory}:\n{result.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)


def pod_specs(manifest: Manifest) -> Iterator[dict[str, Any]]:
    """The pod specs of a workload: Deployment and Job templates, CronJob job templates."""
    spec = manifest.get("spec", {})
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = (
        spec.get("template") if manifest["kind"] in ("Deployment", "Job", "CronJob") else None
    )
    if template is not None:
        yield template["spec"]


def containers(manifest: Manifest) -> Iterator[dict[str, Any]]:
    for spec in pod_specs(manifest):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def image_name_and_tag(reference: str) -> tuple[str, str]:
    """An image reference's name and tag ("" when it has none); a reference
    pinned by digest is refused, the tests read tags."""
    assert "@" not in reference, f"an image pinned by digest: {reference}"
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon was a registry's port
        return reference, ""
    return name, tag
