"""The real node: containerd, runc, bridge CNI, kubelet and kube-proxy joined to the control plane.

A Deployment of our small HTTP server (``localhost/gpuscale-e2e/http``, imported with ctr, never
pulled) runs as real pods on ``real-0``: each becomes Ready only through its readinessProbe (the
server fails ``/healthz`` for its first seconds), answers on its pod IP from this host, and a
ClusterIP Service in front of both answers through kube-proxy's iptables rules, from both pods.
A kubelet restart leaves the containers running and the node Ready. The node takes no GPU pod:
it is tainted and labelled and advertises no GPU resource, so GPU pods, even tolerating every
taint, go to a kwok GPU node through deploy/'s second scheduler or stay Pending. (A kubelet does
not refuse a pod bound to it directly for an extended resource it lacks: it leaves those to
scheduler extenders. Keeping GPU pods off is the scheduler's job, and that is what is checked.)
Where ``make image`` has built the add-on's image, it runs there too (skipped otherwise).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from extender.objects import GPUS_ANNOTATION
from tests.e2e.cluster import ControlPlane
from tests.e2e.gpu_nodes import GpuNode, node_agents
from tests.e2e.install import (
    NODE_AGENT_SA,
    REPO,
    Installed,
    apply,
    delete,
    second_scheduler,
)
from tests.e2e.kube import api, condition, deployment, eventually, namespace
from tests.e2e.node import HTTP_IMAGE, LABELS, TAINT, RealNode

pytestmark = [pytest.mark.cluster]

NS = "real-node"
APP = "web"
PORT = 8080
READY_AFTER_S = 4
"""The server answers /healthz 503 for this long after it starts."""
REPLICAS = 2
GPU_NODE = GpuNode("gpu-beside-real", "NVIDIA-L4", 23034, (0,))
"""One kwok GPU node (24 GB) beside the real node, for the GPU placement check."""


def _web(node: RealNode) -> list[dict[str, Any]]:
    container = {
        "name": "http",
        "image": HTTP_IMAGE,
        "imagePullPolicy": "Never",
        "args": [str(PORT), str(READY_AFTER_S)],
        "ports": [{"containerPort": PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
        },
    }
    pod_spec = node.pod_spec([container], automountServiceAccountToken=False)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": APP}},
            "template": {"metadata": {"labels": {"app": APP}}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": APP},
            "ports": [{"port": 80, "targetPort": PORT}],
        },
    }
    return [namespace(NS), deployment, service]


@pytest.fixture(scope="module")
def web(control_plane: ControlPlane, real_node: RealNode) -> Iterator[list[dict[str, Any]]]:
    objs = _web(real_node)
    apply(control_plane, objs)
    try:
        yield objs
    finally:
        delete(control_plane, [namespace(NS)])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _ready_pods(admin_client: Any) -> list[Any]:
    pods = await api(admin_client, "CoreV1Api").list_namespaced_pod(NS, label_selector=f"app={APP}")
    return [
        p
        for p in pods.items
        if p.metadata.deletion_timestamp is None
        and (c := condition(p, "Ready")) is not None
        and c.status == "True"
    ]


async def _wait_ready(admin_client: Any) -> list[Any]:
    return await eventually(
        f"{REPLICAS} pods of {APP} Ready",
        lambda: _ready_pods(admin_client),
        lambda pods: len(pods) == REPLICAS,
        within=120,
    )


async def test_node_is_ready_and_cpu_only(admin_client: Any, real_node: RealNode) -> None:
    node = await api(admin_client, "CoreV1Api").read_node(real_node.name)
    assert condition(node, "Ready").status == "True"
    info = node.status.node_info
    assert info.kubelet_version == "v1.37.2"
    assert info.kube_proxy_version in ("", "v1.37.2")  # deprecated field, emptied upstream
    assert info.container_runtime_version.startswith("containerd://")
    for key, value in LABELS.items():
        assert node.metadata.labels[key] == value
    taints = [(t.key, t.value, t.effect) for t in node.spec.taints or []]
    assert (TAINT["key"], TAINT["value"], TAINT["effect"]) in taints
    gpu_resources = [r for r in node.status.allocatable if "gpu" in r]
    assert gpu_resources == [], gpu_resources


async def test_pods_become_ready_through_their_readiness_probe(
    admin_client: Any, web: list[dict[str, Any]]
) -> None:
    pods = await _wait_ready(admin_client)
    for pod in pods:
        status = pod.status.container_statuses[0]
        assert status.image == HTTP_IMAGE or status.image.endswith(HTTP_IMAGE)
        assert status.restart_count == 0
        started = status.state.running.started_at
        ready_at = condition(pod, "Ready").last_transition_time
        # Without the probe the kubelet marks it Ready at once; with it, not before /healthz
        # turns 200 (timestamps have one-second resolution).
        assert ready_at - started >= timedelta(seconds=READY_AFTER_S - 1), (started, ready_at)


async def test_pod_ip_answers_from_the_host(
    admin_client: Any, real_node: RealNode, web: list[dict[str, Any]]
) -> None:
    pods = await _wait_ready(admin_client)
    for pod in pods:
        assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(real_node.pod_cidr)
        status, body = _get(f"http://{pod.status.pod_ip}:{PORT}/")
        assert (status, body.strip()) == (200, pod.metadata.name)


async def test_cluster_ip_service_answers_through_kube_proxy(
    admin_client: Any, real_node: RealNode, web: list[dict[str, Any]]
) -> None:
    assert real_node.proxy_mode() == "iptables"
    pods = await _wait_ready(admin_client)
    names = {p.metadata.name for p in pods}
    service = await api(admin_client, "CoreV1Api").read_namespaced_service(APP, NS)
    cluster_ip = service.spec.cluster_ip
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(real_node.service_cidr)

    seen: set[str] = set()

    async def answers() -> set[str]:
        # kube-proxy picks a backend at random per connection: 40 requests miss one of two
        # pods with probability 2**-39.
        for _ in range(40):
            try:
                status, body = _get(f"http://{cluster_ip}/")
            except OSError:
                continue  # rules not programmed yet
            if status == 200:
                seen.add(body.strip())
        return seen

    await eventually("both pods behind the ClusterIP", answers, lambda s: s >= names, within=60)
    assert seen == names


async def test_kubelet_restart_keeps_pods_running_and_node_ready(
    admin_client: Any, real_node: RealNode, web: list[dict[str, Any]]
) -> None:
    core = api(admin_client, "CoreV1Api")
    before = {
        p.metadata.uid: p.status.container_statuses[0].container_id
        for p in await _wait_ready(admin_client)
    }
    ready_since = condition(await core.read_node(real_node.name), "Ready").last_transition_time

    kubelet = real_node.processes["kubelet"]
    assert kubelet.popen is not None
    old_pid = kubelet.popen.pid
    real_node.restart_kubelet()
    assert kubelet.popen is not None and kubelet.popen.pid != old_pid
    # Heartbeats carry whole seconds: one later than this second is the new kubelet's.
    restarted_at = datetime.now(UTC).replace(microsecond=0)

    async def node_now() -> Any:
        return await core.read_node(real_node.name)

    # The restarted kubelet reports the node's status once it has synced its pods again.
    node = await eventually(
        "a node status from the restarted kubelet",
        node_now,
        lambda n: condition(n, "Ready").last_heartbeat_time > restarted_at,
        within=60,
    )
    ready = condition(node, "Ready")
    assert ready.status == "True"
    assert ready.last_transition_time == ready_since, "the node went NotReady and back"

    after = await _wait_ready(admin_client)
    assert {p.metadata.uid: p.status.container_statuses[0].container_id for p in after} == before
    assert all(p.status.container_statuses[0].restart_count == 0 for p in after)
    for pod in after:
        assert _get(f"http://{pod.status.pod_ip}:{PORT}/")[0] == 200


@pytest.fixture(scope="module")
def gpu_scheduler(installed: Installed) -> Iterator[None]:
    """deploy/'s second scheduler with its extender, as the scheduling scenario runs them."""
    try:
        with second_scheduler(installed):
            yield
    finally:
        delete(installed.cp, [GPU_NODE.manifest()])


async def test_gpu_pods_go_to_kwok_nodes_never_to_the_real_one(
    admin_client: Any,
    control_plane: ControlPlane,
    installed: Installed,
    real_node: RealNode,
    gpu_scheduler: None,
    web: list[dict[str, Any]],
) -> None:
    core = api(admin_client, "CoreV1Api")
    apply(control_plane, [GPU_NODE.manifest()])

    async def gpu_node_published() -> bool:
        node = await core.read_node(GPU_NODE.name)
        ready = condition(node, "Ready")
        annotated = GPUS_ANNOTATION in (node.metadata.annotations or {})
        return annotated and ready is not None and ready.status == "True"

    # Tolerating every taint: only the real node's resources (no nvidia.com/gpu) and the
    # extender (no GPUs published for it) keep these pods off it.
    anywhere = {"tolerations": [{"operator": "Exists"}]}
    fits = deployment(
        "gpu-fits", NS, 1, scheduler="gpuscale", gpus=1, gpu_memory_mib=8000, pod_spec=anywhere
    )
    too_big = deployment(
        "gpu-too-big", NS, 1, scheduler="gpuscale", gpus=1, gpu_memory_mib=40000, pod_spec=anywhere
    )
    async with node_agents([GPU_NODE], installed.kubeconfig(NODE_AGENT_SA)):
        await eventually("GPU node published", gpu_node_published, bool, within=60)
        apply(control_plane, [fits, too_big])

        async def placed(app: str) -> list[Any]:
            pods = await core.list_namespaced_pod(NS, label_selector=f"app={app}")
            return list(pods.items)

        bound = await eventually(
            "the fitting GPU pod bound",
            lambda: placed("gpu-fits"),
            lambda ps: len(ps) == 1 and bool(ps[0].spec.node_name),
            within=60,
        )
        assert bound[0].spec.node_name == GPU_NODE.name

        async def refusals() -> list[str]:
            (pod,) = await placed("gpu-too-big")
            assert pod.spec.node_name is None, f"bound to {pod.spec.node_name}"
            events = await core.list_namespaced_event(
                NS,
                field_selector=f"involvedObject.name={pod.metadata.name},reason=FailedScheduling",
            )
            return [e.message for e in events.items]

        messages = await eventually("FailedScheduling", refusals, bool, within=60)
        assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages
        (pod,) = await placed("gpu-too-big")
        assert pod.spec.node_name is None


GPUSCALE_ARCHIVE = Path(
    os.environ.get("GPUSCALE_IMAGE_ARCHIVE", str(REPO / "build" / "images" / "gpuscale.tar"))
)


@pytest.fixture
def gpuscale_image(real_node: RealNode) -> str:
    """The add-on's image imported into the node, or a skip where ``make image`` has not run."""
    if not GPUSCALE_ARCHIVE.exists():
        pytest.skip(f"{GPUSCALE_ARCHIVE} not built (`make image`; GPUSCALE_IMAGE_ARCHIVE moves it)")
    names = real_node.import_image(GPUSCALE_ARCHIVE)
    assert names, f"nothing imported from {GPUSCALE_ARCHIVE}"
    return names[0]


async def test_gpuscale_image_serves_http_on_the_node(
    admin_client: Any,
    control_plane: ControlPlane,
    real_node: RealNode,
    gpuscale_image: str,
    web: list[dict[str, Any]],
) -> None:
    """The add-on's own image (``make image``) starts under the kubelet as deploy/ runs it (its
    uid, read-only root) and its Python serves HTTP through a readinessProbe."""
    container = {
        "name": "http",
        "image": gpuscale_image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-m", "http.server", str(PORT), "--directory", "/"],
        "readinessProbe": {"httpGet": {"path": "/", "port": PORT}, "periodSeconds": 1},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpuscale-image", "namespace": NS, "labels": {"app": "image"}},
        "spec": real_node.pod_spec([container], automountServiceAccountToken=False),
    }
    apply(control_plane, [pod])
    core = api(admin_client, "CoreV1Api")
    ready = await eventually(
        "the gpuscale image's pod Ready",
        lambda: core.read_namespaced_pod("gpuscale-image", NS),
        lambda p: (c := condition(p, "Ready")) is not None and c.status == "True",
        within=120,
    )
    status, _ = _get(f"http://{ready.status.pod_ip}:{PORT}/")
    assert status == 200
