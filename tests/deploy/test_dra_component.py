"""components/dra: the extender reads DRA objects and kube-scheduler sends it DRA pods; the
chart's ``scheduler.extender.inventory`` with ``dra`` renders the same."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy.manifests import Obj, find, render, render_with_component
from tests.deploy.test_helm import assert_same, template
from tests.deploy.test_render_validate import VERSIONS
from tests.e2e.install import scheduler_config


def _render(tmp_path: Path) -> list[Obj]:
    return render_with_component("dra", tmp_path)


def _extender_args(objs: list[Obj]) -> list[str]:
    pod = find(objs, "Deployment", "gpuscale-scheduler")["spec"]["template"]["spec"]
    (ext,) = [c for c in pod["containers"] if c["name"] == "extender"]
    return list(ext["args"])


@pytest.mark.parametrize("version", VERSIONS)
def test_component_renders_and_validates(tmp_path: Path, version: str) -> None:
    for obj in _render(tmp_path):
        if "/" not in obj["apiVersion"] or obj["apiVersion"].split("/")[0].endswith("k8s.io"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_dra_inventory_and_every_pod_of_the_profile_sent(tmp_path: Path) -> None:
    objs = _render(tmp_path)
    assert "--inventory=annotation,dra,gfd" in _extender_args(objs)
    (ext,) = scheduler_config(objs)["extenders"]
    assert "managedResources" not in ext
    (plain,) = scheduler_config(render())["extenders"]
    assert {r["name"] for r in plain["managedResources"]} == {
        "gpuscale.io/gpu-memory",
        "nvidia.com/gpu",
    }
    # Apart from managedResources, the same scheduler configuration as deploy/'s.
    plain.pop("managedResources")
    assert scheduler_config(objs) == {**scheduler_config(render()), "extenders": [plain]}


def test_resource_api_rights_are_read_only_and_only_these() -> None:
    role = find(render(), "ClusterRole", "gpuscale-extender")
    rules = [r for r in role["rules"] if "resource.k8s.io" in r["apiGroups"]]
    assert rules == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceslices", "resourceclaims", "deviceclasses"],
            "verbs": ["get", "list", "watch"],
        }
    ]


def test_chart_with_dra_inventory_is_the_component(tmp_path: Path) -> None:
    assert_same(
        template(namespace__create="true", scheduler__extender__inventory="{annotation,dra,gfd}"),
        _render(tmp_path),
    )
