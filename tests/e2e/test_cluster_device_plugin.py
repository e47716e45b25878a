"""Issue #28's proof on a real kubelet: the GPUs the extender picks are the GPUs the container gets.

gpuscale's node agent runs on this machine as the DaemonSet would run it with
``components/device-plugin`` (``gpuscale node-agent --device-plugin``, the node agent's
ServiceAccount with the component's RBAC), against node ``real-0``'s own kubelet: its
device-plugins folder and PodResources socket, and a fake inventory of two 80 GiB GPUs (no NVIDIA
runtime here), which the agent also publishes as ``gpuscale.io/gpus``. The plugin registers
``nvidia.com/gpu`` and the node advertises it. Pods with ``schedulerName: gpuscale`` that select
``real-0`` are placed by deploy/'s second scheduler through the extender, which writes
``gpuscale.io/gpu-indices``; the kubelet then asks the plugin for devices, and each container's
environment, read back from inside it (the workload image's ``GET /env`` on the pod IP), names
exactly the annotated GPUs: a whole-GPU pod alone on one GPU, two memory-share pods on the other,
with the same UUID and shares that fit the GPU. The kubelet's own checkpoint records device IDs
on the same GPUs. A pod bound to the node without the scheduler is refused at ``Allocate``, with
a Warning Event saying why. A kubelet restart makes the plugin register again; the running
containers keep their environment and a pod created afterwards gets its GPUs. Teardown leaves
``real-0`` CPU-only again (no annotation, no ``nvidia.com/gpu``) for the scenarios after it.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from extender.device_plugin.devices import CHECKPOINT_FILE
from extender.device_plugin.matching import uuid_of
from extender.inventory import parse_gpus_annotation
from extender.objects import (
    GPU_INDICES_ANNOTATION,
    GPU_MEMORY_RESOURCE,
    GPU_RESOURCE,
    GPUS_ANNOTATION,
)
from tests.e2e.cluster import ControlPlane, Process, free_port, wait_until
from tests.e2e.install import (
    NODE_AGENT_SA,
    REPO,
    Installed,
    apply,
    delete,
    gpuscale_bin,
    second_scheduler,
    wait_http_ok,
)
from tests.e2e.kube import namespace
from tests.e2e.node import HTTP_IMAGE, LABELS, TOLERATION, RealNode

pytestmark = [pytest.mark.cluster]

NS = "device-plugin"
PORT = 8080
TOTAL_MIB = 81920
SHARES = 16
"""IDs the plugin advertises per GPU (its default): the node's ``nvidia.com/gpu`` is 2 x 16."""
MODEL = "NVIDIA-A100-SXM4-80GB"
UUIDS = ("GPU-e2e00000-0000-4000-8000-000000000000", "GPU-e2e00001-0000-4000-8000-000000000001")
SHARE_MIB = 30000
"""Two of these fit one GPU beside each other (60000 of 81920 MiB), not beside a whole-GPU pod."""
RBAC = REPO / "deploy" / "components" / "device-plugin" / "rbac.yaml"


def _inventory() -> list[dict[str, Any]]:
    return [
        {"index": i, "uuid": u, "model": MODEL, "totalMiB": TOTAL_MIB, "usedMiB": 0}
        for i, u in enumerate(UUIDS)
    ]


def _metrics(proc: Process) -> dict[str, float]:
    """The node agent's unlabelled samples (the device plugin's are all unlabelled)."""
    url = f"http://127.0.0.1:{proc.ports['ops']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            out[parts[0]] = float(parts[1])
    return out


def _gpu_pod(
    name: str, node: RealNode, *, gpus: int, mib: int | None, scheduled: bool = True
) -> dict[str, Any]:
    """Our HTTP workload asking for ``gpus`` GPUs (``mib`` per GPU, or whole ones), placed by
    the gpuscale scheduler on the real node (or, ``scheduled=False``, bound to it directly)."""
    limits = {GPU_RESOURCE: str(gpus)}
    if mib is not None:
        limits[GPU_MEMORY_RESOURCE] = str(mib)
    container = {
        "name": "http",
        "image": HTTP_IMAGE,
        "imagePullPolicy": "Never",
        "args": [str(PORT), "0"],
        "ports": [{"containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": limits},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
        },
    }
    # No Service variables: the environment read back is the kubelet's and the plugin's.
    extra: dict[str, Any] = {"automountServiceAccountToken": False, "enableServiceLinks": False}
    if scheduled:
        spec = {
            "schedulerName": "gpuscale",
            "nodeSelector": dict(LABELS),
            "tolerations": [dict(TOLERATION)],
            "containers": [container],
            **extra,
        }
    else:
        spec = node.pod_spec([container], **extra)
    spec["restartPolicy"] = "Never"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "gpu"}},
        "spec": spec,
    }


def _expected_env(indices: list[int], mib: int | None) -> dict[str, str]:
    """What the plugin promises (extender/README.md, "From score to container")."""
    share = TOTAL_MIB if mib is None else mib
    return {
        "NVIDIA_VISIBLE_DEVICES": ",".join(UUIDS[i] for i in indices),
        "GPUSCALE_GPU_INDICES": ",".join(map(str, indices)),
        "GPUSCALE_GPU_MEMORY_MIB": str(share),
        # Rounded down to 4 digits: never more than the share.
        "GPUSCALE_GPU_MEMORY_FRACTION": f"{math.floor(share * 10**4 / TOTAL_MIB) / 10**4:.4f}",
    }


def _gpu_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k == "NVIDIA_VISIBLE_DEVICES" or "GPUSCALE_" in k}


def _checkpoint_gpus(node: RealNode) -> dict[str, set[str]]:
    """Per pod uid, the GPUs (UUIDs) of the device IDs the kubelet's checkpoint records."""
    data = json.loads((node.device_plugin_dir / CHECKPOINT_FILE).read_text())
    out: dict[str, set[str]] = {}
    for entry in data["Data"]["PodDeviceEntries"] or []:
        if entry["ResourceName"] == GPU_RESOURCE:
            ids = [i for per_numa in entry["DeviceIDs"].values() for i in per_numa]
            out.setdefault(entry["PodUID"], set()).update(str(uuid_of(i)) for i in ids)
    return out


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device_plugin(
    control_plane: ControlPlane, installed: Installed, real_node: RealNode
) -> Iterator[Process]:
    """``gpuscale node-agent --device-plugin`` for ``real-0``, registered and advertised."""
    rbac = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]
    apply(control_plane, rbac)
    inventory = control_plane.workdir / "device-plugin-inventory.json"
    inventory.write_text(json.dumps(_inventory()))
    ops = free_port()
    argv = [
        gpuscale_bin(),
        "node-agent",
        f"--node-name={real_node.name}",
        f"--kubeconfig={installed.kubeconfig(NODE_AGENT_SA)}",
        f"--address=127.0.0.1:{ops}",
        "--interval=2s",
        "--device-plugin",
        f"--device-plugin-dir={real_node.device_plugin_dir}",
        f"--pod-resources-socket={real_node.pod_resources_socket}",
        f"--fake-inventory={inventory}",
        "--log-level=info",
    ]
    proc = Process(
        "gpuscale-node-agent",
        argv,
        control_plane.workdir / "gpuscale-node-agent.log",
        ports={"ops": ops},
    )
    proc.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{ops}/readyz", within=60, proc=proc)

        def advertised() -> bool:
            status, node = control_plane.request("GET", f"/api/v1/nodes/{real_node.name}")
            return status == 200 and node["status"]["allocatable"].get(GPU_RESOURCE) == str(
                len(UUIDS) * SHARES
            )

        wait_until(f"{GPU_RESOURCE} on {real_node.name}", advertised, within=60, log=proc.log)
        yield proc
    finally:
        proc.stop()
        control_plane.request(
            "PATCH",
            f"/api/v1/nodes/{real_node.name}",
            {"metadata": {"annotations": {GPUS_ANNOTATION: None}}},
            content_type="application/merge-patch+json",
        )
        real_node.forget_device_plugins([GPU_RESOURCE])
        delete(control_plane, rbac)


@pytest.fixture(scope="module")
def gpu_scheduler(installed: Installed, device_plugin: Process) -> Iterator[None]:
    """deploy/'s second scheduler with its extender, as the scheduling scenario runs them."""
    with second_scheduler(installed):
        yield


@pytest.fixture(scope="module")
def gpu_namespace(
    control_plane: ControlPlane, device_plugin: Process, gpu_scheduler: None
) -> Iterator[str]:
    """The scenario's namespace; its pods are gone (their devices given back) before the
    plugin stops."""
    apply(control_plane, [namespace(NS)])
    try:
        yield NS
    finally:
        delete(control_plane, [namespace(NS)])

        def no_pods() -> bool:
            status, pods = control_plane.request("GET", f"/api/v1/namespaces/{NS}/pods")
            return status == 404 or (status == 200 and not pods["items"])

        wait_until(f"pods of {NS} gone", no_pods, within=120)


def _pod(cp: ControlPlane, name: str) -> dict[str, Any]:
    status, pod = cp.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
    assert status == 200, (status, pod)
    return dict(pod)


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready(cp: ControlPlane, name: str) -> dict[str, Any]:
    """The pod once Ready (placed, admitted with its devices, serving)."""
    wait_until(f"pod {name} Ready", lambda: _is_ready(_pod(cp, name)), within=120)
    return _pod(cp, name)


def _indices(pod: dict[str, Any]) -> list[int]:
    return [int(i) for i in pod["metadata"]["annotations"][GPU_INDICES_ANNOTATION].split(",")]


def _env(pod: dict[str, Any]) -> dict[str, str]:
    """The container's environment, from inside it (``GET /env`` on the pod IP)."""
    url = f"http://{pod['status']['podIP']}:{PORT}/env"
    with urllib.request.urlopen(url, timeout=5) as r:
        lines = r.read().decode().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _container_id(pod: dict[str, Any]) -> tuple[str, int]:
    (status,) = pod["status"]["containerStatuses"]
    return str(status["containerID"]), int(status["restartCount"])


@pytest.fixture(scope="module")
def placed(
    control_plane: ControlPlane, real_node: RealNode, gpu_namespace: str
) -> dict[str, dict[str, Any]]:
    """A whole-GPU pod, then two pods of SHARE_MIB each, all Ready on real-0 (by name)."""
    # The whole GPU first: the shares then have one GPU left, whatever the scoring strategy.
    apply(control_plane, [_gpu_pod("whole", real_node, gpus=1, mib=None)])
    pods = {"whole": _ready(control_plane, "whole")}
    shares = ("share-a", "share-b")
    apply(control_plane, [_gpu_pod(n, real_node, gpus=1, mib=SHARE_MIB) for n in shares])
    for name in shares:
        pods[name] = _ready(control_plane, name)
    return pods


MIB_OF = {"whole": None, "share-a": SHARE_MIB, "share-b": SHARE_MIB, "after-restart": 10000}


def _check_devices(node: RealNode, pod: dict[str, Any]) -> list[int]:
    """The pod's container got exactly its annotation's GPUs and its share; returns them."""
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == node.name
    indices = _indices(pod)
    assert len(indices) == 1, indices
    assert _gpu_env(_env(pod)) == _expected_env(indices, MIB_OF[name]), name
    # The kubelet's own record (its checkpoint) holds IDs on the same GPU.
    assert _checkpoint_gpus(node)[pod["metadata"]["uid"]] == {UUIDS[i] for i in indices}, name
    return indices


# -- the proof --------------------------------------------------------------------------------


def test_plugin_registers_and_the_node_advertises_its_gpus(
    control_plane: ControlPlane, real_node: RealNode, device_plugin: Process
) -> None:
    status, node = control_plane.request("GET", f"/api/v1/nodes/{real_node.name}")
    assert status == 200
    assert node["status"]["capacity"][GPU_RESOURCE] == str(len(UUIDS) * SHARES)
    report = parse_gpus_annotation(node["metadata"]["annotations"][GPUS_ANNOTATION])
    assert [(d.index, d.uuid, d.total_mib) for d in report.devices] == [
        (i, u, TOTAL_MIB) for i, u in enumerate(UUIDS)
    ]
    metrics = _metrics(device_plugin)
    assert metrics["gpuscale_device_plugin_registered"] == 1
    assert metrics["gpuscale_device_plugin_registrations_total"] == 1
    assert metrics["gpuscale_device_plugin_unhealthy_gpus"] == 0


def test_containers_get_exactly_the_gpus_of_their_annotation(
    real_node: RealNode, placed: dict[str, dict[str, Any]]
) -> None:
    whole = _check_devices(real_node, placed["whole"])
    a = _check_devices(real_node, placed["share-a"])
    b = _check_devices(real_node, placed["share-b"])
    # The whole GPU is nobody else's; the two shares are on the other one, told the same UUID,
    # and their memory fits it.
    assert a == b and a != whole
    env_a, env_b = _env(placed["share-a"]), _env(placed["share-b"])
    assert env_a["NVIDIA_VISIBLE_DEVICES"] == env_b["NVIDIA_VISIBLE_DEVICES"] == UUIDS[a[0]]
    mib = int(env_a["GPUSCALE_GPU_MEMORY_MIB"]) + int(env_b["GPUSCALE_GPU_MEMORY_MIB"])
    assert mib <= TOTAL_MIB
    fractions = float(env_a["GPUSCALE_GPU_MEMORY_FRACTION"]) + float(
        env_b["GPUSCALE_GPU_MEMORY_FRACTION"]
    )
    assert fractions <= 1.0


def test_a_pod_the_extender_did_not_place_is_refused_with_an_event(
    control_plane: ControlPlane, real_node: RealNode, placed: dict[str, dict[str, Any]]
) -> None:
    """Bound to the node directly (no scheduler, so no ``gpuscale.io/gpu-indices``): the plugin
    refuses ``Allocate`` rather than hand out a GPU, and says why on the pod."""
    apply(control_plane, [_gpu_pod("unplaced", real_node, gpus=1, mib=None, scheduled=False)])
    wait_until(
        "pod unplaced Failed",
        lambda: _pod(control_plane, "unplaced").get("status", {}).get("phase") == "Failed",
        within=60,
    )
    status = _pod(control_plane, "unplaced")["status"]
    assert status["reason"] == "UnexpectedAdmissionError", status
    assert "must be placed by the gpuscale scheduler" in status["message"], status
    events: list[dict[str, Any]] = []

    def refused() -> bool:
        query = "fieldSelector=involvedObject.name%3Dunplaced,reason%3DGpuAllocationFailed"
        code, body = control_plane.request("GET", f"/api/v1/namespaces/{NS}/events?{query}")
        events[:] = body.get("items", []) if code == 200 else []
        return bool(events)

    wait_until("GpuAllocationFailed on pod unplaced", refused, within=30)
    (event,) = events
    assert event["type"] == "Warning"
    assert event["source"]["component"] == "gpuscale-device-plugin"
    assert "no pod bound to node real-0 with annotation gpuscale.io/gpu-indices" in event["message"]
    # The placed pods were not disturbed.
    for name in ("whole", "share-a", "share-b"):
        assert _is_ready(_pod(control_plane, name)), name


def test_kubelet_restart_registers_again_and_keeps_allocations(
    control_plane: ControlPlane,
    real_node: RealNode,
    device_plugin: Process,
    placed: dict[str, dict[str, Any]],
) -> None:
    before = {n: (_container_id(p), _gpu_env(_env(p))) for n, p in placed.items()}
    registrations = _metrics(device_plugin)["gpuscale_device_plugin_registrations_total"]

    real_node.restart_kubelet()

    def registered_again() -> bool:
        m = _metrics(device_plugin)
        return (
            m["gpuscale_device_plugin_registrations_total"] > registrations
            and m["gpuscale_device_plugin_registered"] == 1
        )

    wait_until("the plugin registered again", registered_again, within=60, log=device_plugin.log)

    def healthy_again() -> bool:
        _, node = control_plane.request("GET", f"/api/v1/nodes/{real_node.name}")
        return bool(node["status"]["allocatable"].get(GPU_RESOURCE) == str(len(UUIDS) * SHARES))

    wait_until(f"{GPU_RESOURCE} allocatable again", healthy_again, within=60)
    # The same containers, never restarted, with the same devices.
    for name, (container, env) in before.items():
        pod = _pod(control_plane, name)
        assert _is_ready(pod), name
        assert (_container_id(pod), _gpu_env(_env(pod))) == (container, env), name
        _check_devices(real_node, pod)

    # A new pod after the restart gets its own GPUs too, within what its GPU has left.
    apply(
        control_plane, [_gpu_pod("after-restart", real_node, gpus=1, mib=MIB_OF["after-restart"])]
    )
    after = _ready(control_plane, "after-restart")
    (index,) = _check_devices(real_node, after)
    on_it = [
        int(_env(_pod(control_plane, n))["GPUSCALE_GPU_MEMORY_MIB"])
        for n in ("whole", "share-a", "share-b", "after-restart")
        if _indices(_pod(control_plane, n)) == [index]
    ]
    assert sum(on_it) <= TOTAL_MIB, on_it
