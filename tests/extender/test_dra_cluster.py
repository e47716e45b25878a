"""DRA through the extender: pods with claims filtered and scored on the state, and the cluster
cache watching ResourceSlices, ResourceClaims and DeviceClasses (against the API stand-in)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from extender.cluster_cache import KubeCluster
from extender.cluster_state import ClusterState
from extender.decode import pod_from_json
from extender.dra import claim_from_json, device_class_from_json, slice_from_json
from extender.inventory import InventoryConfig
from extender.objects import NodeInfo, PodClaim
from extender.server import Extender
from tests.extender.test_cluster_cache import wait_until
from tests.support.dra_objects import (
    allocated_claim,
    claim_spec,
    device_class,
    gpu_device,
    resource_slice,
)
from tests.support.kube_standin import KubeStandIn

NOW = 1_800_000_000.0
A100 = "NVIDIA A100-SXM4-80GB"
DRA = InventoryConfig(("dra",))


def dra_slice(node: str, n: int = 2, memory_mib: int = 81920) -> dict[str, Any]:
    return resource_slice(
        node,
        [
            gpu_device(i, uuid=f"GPU-{node}-{i}", product=A100, memory_mib=memory_mib, shared=True)
            for i in range(n)
        ],
    )


def claim_pod(claim: str, name: str = "p", node: str = "") -> dict[str, Any]:
    """A pod made from a template: its claim's generated name is in the status."""
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {
            "containers": [{"name": "m", "resources": {"requests": {"cpu": "1"}}}],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}],
        },
        "status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": claim}]},
    }
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def unallocated(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": claim_spec(**spec)}


def state_with(*nodes: str) -> ClusterState:
    state = ClusterState(DRA)
    for n in nodes:
        state.upsert_node(NodeInfo(n, labels={"kubernetes.io/hostname": n}))
        state.upsert_slice(slice_from_json(dra_slice(n)))
    state.dra.classes["gpu.nvidia.com"] = device_class_from_json(device_class())
    return state


def test_pod_claims_decode_with_generated_names() -> None:
    pod = pod_from_json(claim_pod("p-gpu-x1"))
    assert pod.claims == (PodClaim("gpu", "p-gpu-x1", "t"),)
    assert pod.gpu is None  # the need comes from the claim, resolved against the state


def test_filter_uses_claims_for_need_and_reason() -> None:
    state = state_with("n1", "n2")
    # n1: both GPUs have 70 GiB taken by claims; n2 is empty.
    for i in range(2):
        state.upsert_claim(
            claim_from_json(allocated_claim("ns", f"old{i}", "n1", [(f"gpu-{i}", "70Gi")]))
        )
    state.upsert_claim(claim_from_json(unallocated("new", memory="20Gi")))
    ext = Extender(state)
    reply = ext.filter({"Pod": claim_pod("new"), "NodeNames": ["n1", "n2"]}, NOW)
    assert reply["NodeNames"] == ["n2"]
    assert reply["FailedNodes"]["n1"].startswith("insufficient GPU memory: need 1×20480 MiB")
    # Binpack prefers the node whose device is left fuller.
    state.upsert_claim(claim_from_json(allocated_claim("ns", "old0", "n1", [("gpu-0", "50Gi")])))
    scores = ext.prioritize({"Pod": claim_pod("new"), "NodeNames": ["n1", "n2"]}, NOW)
    assert scores[0]["Score"] > scores[1]["Score"]


def test_selector_on_attributes_filters_nodes_with_the_dra_reason() -> None:
    state = state_with("n1", "n2")
    state.upsert_claim(
        claim_from_json(
            unallocated(
                "new",
                memory="10Gi",
                selectors=["device.attributes['gpu.nvidia.com'].uuid == 'GPU-n2-1'"],
            )
        )
    )
    reply = Extender(state).filter({"Pod": claim_pod("new"), "NodeNames": ["n1", "n2"]}, NOW)
    assert reply["NodeNames"] == ["n2"]
    assert reply["FailedNodes"]["n1"] == (
        "no DRA device with 10240 MiB free matching driver == 'gpu.nvidia.com' && "
        "gpu.nvidia.com/type == 'gpu' && gpu.nvidia.com/uuid == 'GPU-n2-1'"
    )


def test_whole_gpu_claim_needs_an_idle_device_and_a_claim_is_counted_once() -> None:
    state = state_with("n1")
    state.upsert_claim(claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", "1Gi")])))
    state.upsert_claim(claim_from_json(unallocated("whole", count=2)))
    reply = Extender(state).filter({"Pod": claim_pod("whole"), "NodeNames": ["n1"]}, NOW)
    assert reply["FailedNodes"]["n1"] == "insufficient GPUs: need 2 whole GPU(s), node has 1 idle"
    state.delete_claim("ns/a")
    reply = Extender(state).filter({"Pod": claim_pod("whole"), "NodeNames": ["n1"]}, NOW)
    assert reply["NodeNames"] == ["n1"]
    # Updating a claim replaces what it held; it is never counted twice.
    for mib in ("10Gi", "30Gi", "30Gi"):
        state.upsert_claim(claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", mib)])))
    gpus = state.gpus("n1", NOW)
    assert not isinstance(gpus, str) and gpus.devices[0].free_mib == 81920 - 30720


def test_pod_without_known_claims_passes_to_the_dra_plugin() -> None:
    state = state_with("n1")
    reply = Extender(state).filter({"Pod": claim_pod("unknown"), "NodeNames": ["n1"]}, NOW)
    assert reply["NodeNames"] == ["n1"]


async def test_cache_watches_slices_claims_and_classes(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    kube.store.create(dra_slice("n1"))
    kube.store.create(device_class())
    kube.store.put(allocated_claim("ns", "a", "n1", [("gpu-0", "40Gi")]))
    state = ClusterState(DRA)
    c = KubeCluster(kube_client, state, dra=True)
    task = asyncio.create_task(c.run())
    try:
        await wait_until(c, lambda: c.ready)
        assert "n1" in state.nodes
        assert "gpu.nvidia.com" in state.dra.classes
        gpus = state.gpus("n1", NOW)
        assert not isinstance(gpus, str) and [d.free_mib for d in gpus.devices] == [
            81920 - 40960,
            81920,
        ]
        kube.store.put(allocated_claim("ns", "b", "n1", [("gpu-1", None)]))
        await wait_until(c, lambda: "ns/b" in state.dra.claims)
        gpus = state.gpus("n1", NOW)
        assert not isinstance(gpus, str) and gpus.devices[1].free_mib == 0
        kube.store.delete("resourceclaims", "ns", "a")
        await wait_until(c, lambda: "ns/a" not in state.dra.claims)
        gpus = state.gpus("n1", NOW)
        assert not isinstance(gpus, str) and gpus.devices[0].free_mib == 81920
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
