"""DRA through the extender: pods with claims filtered and scored on the state, and the cluster
cache watching ResourceSlices, ResourceClaims and DeviceClasses (against the API stand-in)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cluster_cache import KubeCluster
from extender.cluster_state import ClusterState
from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.dra import claim_from_json, device_class_from_json, pool_devices, slice_from_json
from extender.inventory import InventoryConfig
from extender.objects import NodeInfo, PodClaim
from extender.server import Extender
from tests.extender.support import FakeBinder
from tests.extender.test_cluster_cache import wait_until
from tests.extender.test_filtering import node_json, pod_json
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


def dra_slice(
    node: str, n: int = 2, memory_mib: int = 81920, generation: int = 1
) -> dict[str, Any]:
    return resource_slice(
        node,
        [
            gpu_device(i, uuid=f"GPU-{node}-{i}", product=A100, memory_mib=memory_mib, shared=True)
            for i in range(n)
        ],
        generation=generation,
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


def _measured_state() -> ClusterState:
    """Node n1: NVML says GPU 1 has 50000 MiB used outside Kubernetes; both GPUs published."""
    state = ClusterState(InventoryConfig(("annotation", "dra")))
    state.upsert_node(node_from_json(node_json("n1", [0, 50000])))
    state.upsert_slice(slice_from_json(dra_slice("n1")))
    state.dra.classes["gpu.nvidia.com"] = device_class_from_json(device_class())
    return state


async def test_bind_refuses_an_allocation_nvml_has_no_room_for() -> None:
    state = _measured_state()
    state.upsert_pod(pod_from_json(claim_pod("c-fit", name="a")))
    state.upsert_pod(pod_from_json(claim_pod("c-over", name="b")))
    binder = FakeBinder()
    # kube-scheduler's DRA plugin wrote these allocations just before calling bind.
    binder.claims["ns/c-fit"] = allocated_claim("ns", "c-fit", "n1", [("gpu-1", "30000Mi")])
    binder.claims["ns/c-over"] = allocated_claim("ns", "c-over", "n1", [("gpu-1", "30000Mi")])
    ext = Extender(state, binder=binder)
    args = {"PodName": "a", "PodNamespace": "ns", "PodUID": "uid-a", "Node": "n1"}
    assert await ext.bind(args, NOW) == {"Error": ""}
    # The first allocation counts at once, before the watch shows it.
    gpus = state.gpus("n1", NOW)
    assert not isinstance(gpus, str) and gpus.devices[1].free_mib == 81920 - 50000 - 30000
    args = {"PodName": "b", "PodNamespace": "ns", "PodUID": "uid-b", "Node": "n1"}
    reply = await ext.bind(args, NOW)
    assert reply["Error"] == (
        "cannot bind to n1: claim c-over: gpu-1 on n1 has 1920 MiB free, claim takes 30000 MiB"
    )
    assert [b[0] for b in binder.bound] == ["ns/a"]
    # Its pod now can only go where its claim is, and the filter says why it cannot.
    reply = Extender(state).filter({"Pod": claim_pod("c-over", name="b"), "NodeNames": ["n1"]}, NOW)
    assert reply["FailedNodes"]["n1"] == (
        "insufficient GPU memory: claim c-over: gpu-1 on n1 has 1920 MiB free, "
        "claim takes 30000 MiB"
    )


async def test_device_plugin_pod_never_gets_a_dra_device_at_bind() -> None:
    state = ClusterState(InventoryConfig(("annotation", "dra")))
    state.upsert_node(node_from_json(node_json("n1", [0, 0, 0])))
    # The DRA driver publishes NVML's GPU 0 and 2 (uuids GPU-n1-0, GPU-n1-2); GPU 1 is the
    # device plugin's.
    raw = resource_slice(
        "n1",
        [
            gpu_device(i, uuid=f"GPU-n1-{i}", product=A100, memory_mib=81920, shared=True)
            for i in (0, 2)
        ],
    )
    state.upsert_slice(slice_from_json(raw))
    pod = pod_json(mib=1000)
    pod["metadata"]["name"] = "dp"
    state.upsert_pod(pod_from_json(pod))
    binder = FakeBinder()
    ext = Extender(state, binder=binder)
    args = {"PodName": "dp", "PodNamespace": "ns", "PodUID": "u1", "Node": "n1"}
    assert await ext.bind(args, NOW) == {"Error": ""}
    assert binder.bound == [("ns/dp", "n1", (1,))]
    assert state.dra_rows("n1", NOW) == frozenset({0, 2})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete"]),
            st.sampled_from(["n1", "n2"]),  # pool (and node)
            st.integers(0, 1),  # slice part
            st.integers(1, 3),  # generation
            st.integers(1, 2),  # slices in the generation
        ),
        max_size=12,
    )
)
def test_incremental_pools_equal_a_full_recount(ops: list[tuple[str, str, int, int, int]]) -> None:
    """The state recounts only the pool a slice event touches; any sequence of events leaves it
    where a recount of all slices would."""
    state = ClusterState(DRA)
    for op, node, part, gen, count in ops:
        name = f"{node}-{part}"
        if op == "delete":
            state.delete_slice(name)
            continue
        raw = resource_slice(
            node,
            [gpu_device(part, uuid=f"u-{node}-{part}-{gen}", product=A100, memory_mib=1024)],
            generation=gen,
            count=count,
            part=part,
        )
        raw["metadata"]["name"] = name
        state.upsert_slice(slice_from_json(raw))
    full = pool_devices(state.dra.slices.values())
    assert state.dra.by_node == dict(full.by_node)
    assert state.dra.incomplete == dict(full.incomplete)
    assert state.dra.device_node == {
        d.key: n for n, devices in full.by_node.items() for d in devices
    }


def test_what_the_filter_remembers_per_node_follows_slice_changes() -> None:
    state = state_with("n1")
    product = f"device.attributes['gpu.nvidia.com'].productName == '{A100}'"
    state.upsert_claim(claim_from_json(unallocated("new", memory="10Gi", selectors=[product])))
    ext = Extender(state)
    body = {"Pod": claim_pod("new"), "NodeNames": ["n1"]}
    assert ext.filter(body, NOW)["NodeNames"] == ["n1"]
    assert ext.filter(body, NOW)["NodeNames"] == ["n1"]  # now from what was remembered
    other = resource_slice(
        "n1",
        [gpu_device(i, uuid=f"GPU-n1-{i}", product="NVIDIA L4", memory_mib=23034) for i in (0, 1)],
        generation=2,
    )
    state.upsert_slice(slice_from_json(other))
    reason = ext.filter(body, NOW)["FailedNodes"]["n1"]
    assert reason.startswith("no DRA device with 10240 MiB free matching") and A100 in reason
    # And a full device still fails by the shared fit, remembered node or not.
    state.upsert_slice(slice_from_json(dra_slice("n1", generation=3)))
    assert ext.filter(body, NOW)["NodeNames"] == ["n1"]
    for i in range(2):
        state.upsert_claim(
            claim_from_json(allocated_claim("ns", f"full{i}", "n1", [(f"gpu-{i}", "75Gi")]))
        )
    assert ext.filter(body, NOW)["FailedNodes"]["n1"].startswith("insufficient GPU memory")


def test_pod_claims_bad_input_is_a_bad_request_naming_the_field() -> None:
    both = claim_pod("c")
    both["spec"]["resourceClaims"][0]["resourceClaimName"] = "x"
    with pytest.raises(BadRequest, match=r"spec\.resourceClaims\[0\]: expected exactly one"):
        pod_from_json(both)
    wrong = claim_pod("c")
    wrong["status"]["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": 3}]
    with pytest.raises(BadRequest, match=r"resourceClaimStatuses\[0\]\.resourceClaimName"):
        pod_from_json(wrong)
    listless = claim_pod("c")
    listless["spec"]["resourceClaims"] = {"name": "gpu"}
    with pytest.raises(BadRequest, match=r"spec\.resourceClaims: expected a list"):
        pod_from_json(listless)
    # A claim not generated yet (no status) is kept by its template; the need waits for it.
    fresh = claim_pod("c")
    del fresh["status"]
    assert pod_from_json(fresh).claims == (PodClaim("gpu", "", "t"),)
