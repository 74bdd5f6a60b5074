"""Overriding the sidecar's settings with kustomize, rendered by `kubectl kustomize`.

The janitor-sidecar component generates the ConfigMap `ckpt-janitor-config` from its janitor.env.
A consumer overrides one setting with a `configMapGenerator` of `behavior: merge`; kustomize runs
a kustomization's own generators before its components, so that merge works one level up
(kubernetes/overlays/override-example) or from a Component listed after janitor-sidecar, and fails
in the very kustomization that lists the component. Each case is rendered here, and the rendered
objects are checked: the override, every default it left alone, and the sidecar's envFrom naming
the ConfigMap by its new hashed name (so a changed setting rolls the pods).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from nspawn_harness import REPO

KUBERNETES = REPO / "kubernetes"
COMPONENT = KUBERNETES / "components" / "janitor-sidecar"
SAMPLE_WORKLOAD = KUBERNETES / "overlays" / "deployment-sidecar" / "deployment.yaml"
OVERRIDE = {"JANITOR_INTERVAL_TO_KEEP": "50"}
MERGE_GENERATOR = [{"name": "ckpt-janitor-config", "behavior": "merge",
                    "literals": [f"{key}={value}" for key, value in OVERRIDE.items()]}]


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubernetes-client)")
    return subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60, check=False)


def render(directory: Path) -> list[dict[str, Any]]:
    result = kustomize(directory)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def component_defaults() -> dict[str, str]:
    """What the component's janitor.env sets: the values an override must leave alone."""
    pairs = {}
    for line in (COMPONENT / "janitor.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    assert pairs, "the component's janitor.env sets nothing"
    return pairs


def janitor_config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    maps = [d for d in docs if d["kind"] == "ConfigMap"
            and d["metadata"]["name"].startswith("ckpt-janitor-config")]
    assert len(maps) == 1, [d["metadata"]["name"] for d in maps]
    return maps[0]


def sidecar_config_refs(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Workload name -> the ConfigMaps its ckpt-janitor sidecar takes its environment from."""
    refs: dict[str, list[str]] = {}
    for doc in docs:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec")
        if not spec:
            continue
        for container in spec.get("initContainers", []):
            if container["name"] == "ckpt-janitor":
                refs[doc["metadata"]["name"]] = [
                    source["configMapRef"]["name"] for source in container.get("envFrom", [])
                    if "configMapRef" in source]
    return refs


def check_override(docs: list[dict[str, Any]]) -> str:
    """The rendered ConfigMap has the override and every untouched default; the sidecar (on the
    annotated workload only) references it by its hashed name. Returns that name."""
    config_map = janitor_config_map(docs)
    name = config_map["metadata"]["name"]
    assert re.fullmatch(r"ckpt-janitor-config-[a-z0-9]{10}", name), name
    assert config_map["data"] == {**component_defaults(), **OVERRIDE}
    assert sidecar_config_refs(docs) == {"trainer": [name]}
    return name


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def component_path_from(directory: Path) -> str:
    """kustomize takes a component by relative path only."""
    return os.path.relpath(COMPONENT, directory)


def test_override_example_overlay_merges_into_the_component_config() -> None:
    name = check_override(render(KUBERNETES / "overlays" / "override-example"))
    # The merge changed the content, so the name changed too: pods roll on a new setting.
    plain = janitor_config_map(render(KUBERNETES / "overlays" / "deployment-sidecar"))
    assert plain["data"] == component_defaults()
    assert plain["metadata"]["name"] != name


def test_override_from_a_component_listed_after_the_sidecar(tmp_path: Path) -> None:
    """The one-kustomization recipe of docs/deploy.md: the merge in a Component of one's own."""
    app = tmp_path / "app"
    write_yaml(app / "janitor-overrides" / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
        "configMapGenerator": MERGE_GENERATOR})
    shutil.copy(SAMPLE_WORKLOAD, app / "deployment.yaml")
    write_yaml(app / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["deployment.yaml"],
        "components": [component_path_from(app), "janitor-overrides"]})
    check_override(render(app))


def test_merge_beside_the_component_in_one_kustomization_is_refused(tmp_path: Path) -> None:
    """What docs/deploy.md says does not work, and why the recipes above exist: if kustomize
    ever applies this merge, this fails, and the docs can offer the direct way."""
    shutil.copy(SAMPLE_WORKLOAD, tmp_path / "deployment.yaml")
    write_yaml(tmp_path / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["deployment.yaml"], "components": [component_path_from(tmp_path)],
        "configMapGenerator": MERGE_GENERATOR})
    result = kustomize(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "does not exist; cannot merge or replace" in result.stderr, result.stderr
