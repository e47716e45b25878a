"""DRA on the real 1.37 control plane: GPUs published as ResourceSlices (a small fake publisher
writes them as NVIDIA's driver would), claims made from ResourceClaimTemplates, pods placed by
the second scheduler (kube-scheduler's DRA plugin allocates, the gpuscale extender filters and
scores) as ``deploy/components/dra`` configures it.

kwok node ``dra-a`` has two A100s. NVML (the node agent's stand-in) says device 1 has 50000 MiB
used by something outside Kubernetes; DRA cannot know that, since a ResourceSlice carries total
memory only. With memory shares of 40 GiB the DRA allocator alone would fit 4 claims; the
extender, which counts the claims on the devices NVML measures (matched by ``uuid``), lets 2
bind and leaves the other 2 Pending with its reason in FailedScheduling. No device is
over-committed: per device, the claims' ``consumedCapacity`` sums to at most its capacity, and
(for the claims of bound pods) to at most what NVML says is free. ``dra-b`` takes whole-GPU
claims; a mixed node (``dra-c``: one GPU for the device plugin, one published through DRA)
never books a device for both.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from extender.objects import GPUS_ANNOTATION
from extender.quantity import byte_count
from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.gpu_nodes import GpuNode, gpu_indices, node_agents
from tests.e2e.install import NODE_AGENT_SA, Installed, apply, delete, second_scheduler
from tests.e2e.kube import api, eventually, namespace
from tests.support.dra_objects import (
    DRIVER,
    claim_template,
    device_class,
    gpu_device,
    resource_slice,
)

pytestmark = [pytest.mark.cluster]

NS = "dra-workloads"
A100_80 = "NVIDIA-A100-SXM4-80GB"
MIB = 2**20
NODES = (
    GpuNode("dra-a", A100_80, 81920, (0, 50000), labels={"zone": "dra"}),
    GpuNode("dra-b", A100_80, 81920, (0, 0), labels={"zone": "dra"}),
    GpuNode("dra-c", A100_80, 81920, (0, 0), labels={"zone": "dra"}),
)
BY_NAME = {n.name: n for n in NODES}
PUBLISHED = {"dra-a": (0, 1), "dra-b": (0, 1), "dra-c": (1,)}
"""Which NVML devices the fake DRA driver publishes per node (dra-c's GPU 0 is the device
plugin's)."""


def fake_publisher_objects() -> list[dict[str, Any]]:
    """What NVIDIA's DRA driver would write: one pool per node, one slice, device ``gpu-<minor>``
    with its uuid (the NVML stand-in's), product, and memory capacity; shareable by memory
    (consumable capacity is beta and on by default in 1.37)."""
    return [
        resource_slice(
            node.name,
            [
                gpu_device(
                    i,
                    uuid=f"GPU-{i:04d}",
                    product=node.product,
                    memory_mib=node.total_mib,
                    shared=True,
                )
                for i in PUBLISHED[node.name]
            ],
        )
        for node in NODES
    ]


def claim_pod(name: str, template: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "dra"}},
        "spec": {
            "schedulerName": "gpuscale",
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
            "containers": [
                {
                    "name": "server",
                    "image": "vllm/vllm-openai:v0.8.5",
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
        },
    }


def _get(cp: ControlPlane, path: str) -> Any:
    status, body = cp.request("GET", path)
    assert status == 200, (path, body)
    return body


async def _pods(cp: ControlPlane) -> list[dict[str, Any]]:
    body = await asyncio.to_thread(_get, cp, f"/api/v1/namespaces/{NS}/pods?labelSelector=app=dra")
    return [{"apiVersion": "v1", "kind": "Pod", **p} for p in body["items"]]


async def _claims(cp: ControlPlane) -> list[dict[str, Any]]:
    body = await asyncio.to_thread(
        _get, cp, f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims"
    )
    return list(body["items"])


async def _failed_scheduling(cp: ControlPlane, pod: str) -> list[str]:
    path = (
        f"/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name={pod},"
        "reason=FailedScheduling"
    )
    body = await asyncio.to_thread(_get, cp, path)
    return [e["message"] for e in body["items"]]


def consumed(claims: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """MiB taken per (pool, device): consumedCapacity, or the whole device without it."""
    used: dict[tuple[str, str], int] = defaultdict(int)
    for c in claims:
        allocation = (c.get("status") or {}).get("allocation")
        if not allocation:
            continue
        for r in allocation["devices"]["results"]:
            assert r["driver"] == DRIVER
            memory = (r.get("consumedCapacity") or {}).get("memory")
            node = BY_NAME[r["pool"]]
            used[(r["pool"], r["device"])] += (
                node.total_mib if memory is None else -(-byte_count(memory) // MIB)
            )
    return dict(used)


@pytest.fixture(scope="module")
def scheduler(installed: Installed) -> Iterator[tuple[Process, Process]]:
    try:
        with second_scheduler(installed, dra=True) as running:
            yield running
    finally:
        delete(
            installed.cp,
            [n.manifest() for n in NODES]
            + fake_publisher_objects()
            + [device_class(), namespace(NS)],
        )


@pytest.fixture
async def dra_nodes(
    control_plane: ControlPlane, installed: Installed, admin_client: Any
) -> AsyncIterator[tuple[GpuNode, ...]]:
    apply(
        control_plane,
        [n.manifest() for n in NODES]
        + [namespace(NS), device_class()]
        + fake_publisher_objects()
        + [
            claim_template(NS, "share-40gi", memory="40Gi"),
            claim_template(NS, "whole-gpu", count=1),
        ],
    )
    core = api(admin_client, "CoreV1Api")

    async def published() -> list[str]:
        nodes = await core.list_node(label_selector="zone=dra")
        return sorted(
            n.metadata.name
            for n in nodes.items
            if GPUS_ANNOTATION in (n.metadata.annotations or {})
        )

    async with node_agents(NODES, installed.kubeconfig(NODE_AGENT_SA)):
        await eventually(
            "DRA nodes with their NVML annotation",
            published,
            lambda n: n == sorted(BY_NAME),
            within=60,
        )
        yield NODES


async def _settle(cp: ControlPlane, bound: int, pending: int) -> list[dict[str, Any]]:
    async def state() -> tuple[int, int]:
        pods = await _pods(cp)
        n_bound = sum(1 for p in pods if p["spec"].get("nodeName"))
        n_failed = 0
        for p in pods:
            if not p["spec"].get("nodeName") and await _failed_scheduling(
                cp, p["metadata"]["name"]
            ):
                n_failed += 1
        return n_bound, n_failed

    await eventually(
        f"{bound} bound, {pending} failed", state, lambda s: s == (bound, pending), within=90
    )
    await asyncio.sleep(3)  # the scheduler retries; a second look must show the same split
    assert await state() == (bound, pending)
    return await _pods(cp)


async def test_memory_shares_fit_what_nvml_leaves_free_and_the_rest_wait_with_the_reason(
    control_plane: ControlPlane,
    scheduler: tuple[Process, Process],
    dra_nodes: tuple[GpuNode, ...],
) -> None:
    apply(control_plane, [claim_pod(f"share-{i}", "share-40gi", "dra-a") for i in range(4)])
    pods = await _settle(control_plane, bound=2, pending=2)
    claims = await _claims(control_plane)
    bound = {p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")}
    held = [c for c in claims if {r["name"] for r in c["status"].get("reservedFor", [])} & bound]
    used = consumed(held)
    # Two shares fill gpu-0 (80 GiB); NVML leaves gpu-1 31920 MiB, too little for one.
    assert used == {("dra-a", "gpu-0"): 81920}, used
    node = BY_NAME["dra-a"]
    for (_, _device), mib in consumed(claims).items():
        assert mib <= node.total_mib  # every allocation within capacity (DRA's own books)
    for (_, device), mib in used.items():
        assert mib <= node.free_mib(int(device.removeprefix("gpu-")))  # and within NVML's
    waiting = [p for p in pods if not p["spec"].get("nodeName")]
    reasons = [await _failed_scheduling(control_plane, p["metadata"]["name"]) for p in waiting]
    # Usually the filter refuses dra-a (need 1×40960 MiB, best device has 31920 MiB free). When
    # it ran before the second claim was written, the DRA plugin gave gpu-1 to the third pod and
    # the extender refused its bind; kube-scheduler keeps that allocation (Unreserve only drops
    # reservedFor), and the filter then says why the allocated device cannot hold it.
    for r in reasons:  # the cluster may hold other modules' nodes: their count varies
        assert any(
            re.match(r"0/\d+ nodes are available: 1 insufficient GPU memory: ", m)
            and "MiB free" in m
            for m in r
        ), r
    assert any(
        "insufficient GPU memory: need 1×40960 MiB, best device has 31920 MiB free" in m
        or "gpu-1 on dra-a has 31920 MiB free, claim takes 40960 MiB" in m
        or "cannot bind to dra-a: claim " in m
        for r in reasons
        for m in r
    ), reasons
    delete(control_plane, pods)


async def test_whole_gpu_claims_and_a_mixed_node_are_never_double_booked(
    control_plane: ControlPlane,
    scheduler: tuple[Process, Process],
    dra_nodes: tuple[GpuNode, ...],
    admin_client: Any,
) -> None:
    # dra-c: a device-plugin pod (nvidia.com/gpu + memory) takes a whole GPU; the extender must
    # put it on GPU 0 (the device plugin's), never on GPU 1, which DRA hands out.
    plugin_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plugin", "namespace": NS, "labels": {"app": "dra"}},
        "spec": {
            "schedulerName": "gpuscale",
            "nodeSelector": {"kubernetes.io/hostname": "dra-c"},
            "containers": [
                {
                    "name": "server",
                    "image": "vllm/vllm-openai:v0.8.5",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    apply(
        control_plane,
        [plugin_pod]
        + [claim_pod(f"whole-{i}", "whole-gpu", "dra-b") for i in range(3)]
        + [claim_pod(f"mixed-{i}", "whole-gpu", "dra-c") for i in range(2)],
    )
    # dra-b: 2 of 3 whole-GPU claims; dra-c: the plugin pod and 1 of 2 claims.
    pods = await _settle(control_plane, bound=4, pending=2)
    by_name = {p["metadata"]["name"]: p for p in pods}
    core = api(admin_client, "CoreV1Api")
    plugin = await core.read_namespaced_pod("plugin", NS)
    assert plugin.spec.node_name == "dra-c"
    assert gpu_indices(plugin) == [0]
    used = consumed(await _claims(control_plane))
    assert used == {
        ("dra-b", "gpu-0"): 81920,
        ("dra-b", "gpu-1"): 81920,
        ("dra-c", "gpu-1"): 81920,
    }, used
    assert (
        sum(1 for n in by_name if n.startswith("mixed-") and by_name[n]["spec"].get("nodeName"))
        == 1
    )
    delete(control_plane, pods)
