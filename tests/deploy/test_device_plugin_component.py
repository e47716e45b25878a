"""components/device-plugin: the node agent serves the kubelet device plugin."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from extender.device_plugin.server import MEMORY_FRACTION_ENV
from tests.deploy.manifests import DEPLOY, Obj, find, render, render_with_component
from tests.deploy.test_render_validate import VERSIONS


def _render(tmp_path: Path) -> list[Obj]:
    return render_with_component("device-plugin", tmp_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_component_renders_and_validates(tmp_path: Path, version: str) -> None:
    for obj in _render(tmp_path):
        if "/" not in obj["apiVersion"] or obj["apiVersion"].split("/")[0].endswith("k8s.io"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_agent_serves_the_plugin_with_the_kubelets_sockets(tmp_path: Path) -> None:
    objs = _render(tmp_path)
    ds = find(objs, "DaemonSet", "gpuscale-node-agent")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert "--device-plugin" in agent["args"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert "/var/lib/kubelet/device-plugins" in mounts
    assert mounts["/var/lib/kubelet/pod-resources"]["readOnly"] is True
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert paths == {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"}
    assert agent["securityContext"]["runAsUser"] == 0
    # Still locked down otherwise.
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
    labels = find(objs, "Namespace", "gpuscale-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_off_by_default() -> None:
    ds = find(render(), "DaemonSet", "gpuscale-node-agent")
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    assert "--device-plugin" not in agent["args"]
    assert all("hostPath" not in v for v in ds["spec"]["template"]["spec"]["volumes"])


def test_the_shared_gpu_example_reads_the_variable_the_plugin_sets() -> None:
    path = DEPLOY / "examples" / "workloads" / "llama-chat-deployment-shared-gpu.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    assert f'--gpu-memory-utilization "${{{MEMORY_FRACTION_ENV}:?' in script
    assert "--served-model-name llama" in script  # the policy's model_name, as in the original
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
