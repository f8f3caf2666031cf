"""A small Kustomize renderer, so that the tests see what `kubectl apply -k` would
apply without a cluster or a kustomize binary (PyPI has none that renders).

It does what deploy/k8s uses and refuses the rest loudly: `resources` (files and
directories), `namespace`, `images` and strategic-merge `patches` (by the
patch's kind and name, or by a `target` kind). A patch merges maps; on a
custom resource it replaces lists whole, as kustomize does without the CRD's
schema; on a built-in kind, whose lists kustomize merges by key, a list in a
patch is refused rather than guessed at.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
BUILT_IN_GROUPS = {"v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1"}
BUILT_IN_GROUPS |= {"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}


class UnsupportedKustomization(Exception):
    """The kustomization uses something this renderer does not do."""


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory: Path) -> list[Manifest]:
    kustomization_file = directory / "kustomization.yaml"
    [kustomization] = load_documents(kustomization_file)
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{kustomization_file}: {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        manifests += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        apply_patches(manifests, directory / patch["path"], patch.get("target"))
    for image in kustomization.get("images", []):
        set_image(manifests, image)
    if "namespace" in kustomization:
        for manifest in manifests:
            manifest["metadata"]["namespace"] = kustomization["namespace"]
    return manifests


def apply_patches(manifests: list[Manifest], path: Path, target: dict[str, str] | None) -> None:
    for patch in load_documents(path):
        if target is None:
            wanted = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        else:
            wanted = target
        matches = [m for m in manifests if matches_target(m, wanted)]
        if not matches:
            raise UnsupportedKustomization(f"{path}: no resource matches {wanted}")
        for manifest in matches:
            merge(manifest, patch, built_in=manifest["apiVersion"] in BUILT_IN_GROUPS, at="")


def matches_target(manifest: Manifest, target: dict[str, str]) -> bool:
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise UnsupportedKustomization(f"patch target fields {sorted(unknown)}")
    return manifest["kind"] == target["kind"] and target.get("name") in (
        None,
        manifest["metadata"]["name"],
    )


def merge(base: dict[str, Any], patch: dict[str, Any], *, built_in: bool, at: str) -> None:
    for key, value in patch.items():
        path = f"{at}.{key}"
        if path in (".metadata.name", ".apiVersion", ".kind"):
            continue
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, built_in=built_in, at=path)
        elif isinstance(value, list) and built_in:
            raise UnsupportedKustomization(f"a list in a patch of a built-in kind: {path}")
        else:
            base[key] = copy.deepcopy(value)


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


def set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    unknown = set(image) - {"name", "newName", "newTag"}
    if unknown:
        raise UnsupportedKustomization(f"image fields {sorted(unknown)}")
    for manifest in manifests:
        for container in containers(manifest):
            name, tag = image_name_and_tag(container["image"])
            if name == image["name"]:
                tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def image_name_and_tag(reference: str) -> tuple[str, str]:
    if "@" in reference:
        raise UnsupportedKustomization(f"an image pinned by digest: {reference}")
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon was a registry's port
        return reference, ""
    return name, tag
