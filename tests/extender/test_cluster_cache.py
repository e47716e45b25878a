"""List+watch into the cluster state and binding, against the Kubernetes API stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from extender.cluster_cache import KubeCluster
from extender.cluster_state import ClusterState
from extender.server import BindError, Extender
from tests.extender.test_filtering import node_json, pod_json
from tests.support.kube_standin import KubeStandIn

NOW = datetime(2027, 1, 15, 8, 0, 10, tzinfo=UTC).timestamp()


def node_obj(name: str, used: list[int]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", **node_json(name, used)}


def pod_obj(name: str, mib: int, node: str = "") -> dict[str, Any]:
    p = pod_json(mib)
    p["metadata"]["name"] = name
    p["metadata"]["namespace"] = "default"
    p["metadata"].pop("uid")
    p["spec"]["containers"][0]["image"] = "vllm/vllm-openai"
    if node:
        p["spec"]["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", **p}


async def wait_until(cluster: KubeCluster, pred: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not pred():
            cluster.changed.clear()
            await cluster.changed.wait()


@pytest.fixture
async def cluster(kube: KubeStandIn, kube_client: Any) -> AsyncIterator[KubeCluster]:
    kube.store.create(node_obj("n1", [0, 0]))
    kube.store.create(node_obj("n2", [80000, 0]))
    kube.store.create(pod_obj("running", 20000, node="n1"))
    kube.store.create(pod_obj("pending", 20000))
    c = KubeCluster(kube_client, ClusterState())
    task = asyncio.create_task(c.run())
    try:
        await wait_until(c, lambda: c.ready)
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_initial_list(cluster: KubeCluster) -> None:
    s = cluster.state
    assert set(s.nodes) == {"n1", "n2"}
    assert set(s.pods) == {"default/running", "default/pending"}
    assert s.pending_gpu_pods() == 1
    g = s.gpus("n1", NOW)
    assert not isinstance(g, str)
    # the running pod has no gpu-indices annotation: accounting places it best-fit
    assert sorted(d.free_mib for d in g.devices) == [81920 - 20000, 81920]


async def test_watch_events(kube: KubeStandIn, cluster: KubeCluster) -> None:
    await kube.wait_for_watch("pods")
    await kube.wait_for_watch("nodes")
    kube.store.create(node_obj("n3", [0]))
    kube.store.delete("nodes", None, "n2")
    kube.store.delete("pods", "default", "running")
    await wait_until(
        cluster,
        lambda: (
            set(cluster.state.nodes) == {"n1", "n3"} and "default/running" not in cluster.state.pods
        ),
    )
    kube.store.patch("pods", "default", "pending", {"status": {"phase": "Succeeded"}})
    await wait_until(cluster, lambda: "default/pending" not in cluster.state.pods)


async def test_relist_after_expired_watch(kube: KubeStandIn, cluster: KubeCluster) -> None:
    await kube.wait_for_watch("nodes")
    before = cluster.relists["nodes"]
    kube.drop_watches()  # the stream ends; before the client watches again:
    kube.store.create(node_obj("n9", [0]))
    kube.compact()  # ...its resourceVersion is compacted away: 410, list again
    await wait_until(
        cluster, lambda: cluster.relists["nodes"] > before and "n9" in cluster.state.nodes
    )


async def test_relist_after_http_410_and_errors(kube: KubeStandIn, cluster: KubeCluster) -> None:
    await kube.wait_for_watch("pods")
    before = cluster.relists["pods"]
    kube.faults.fail("GET", "/api/v1/pods", status=410, watch=True)
    kube.faults.fail("GET", "/api/v1/pods", status=500, watch=False)
    kube.drop_watches()
    await wait_until(cluster, lambda: cluster.relists["pods"] > before)


async def test_bind_through_the_api(kube: KubeStandIn, cluster: KubeCluster) -> None:
    ext = Extender(cluster.state, binder=cluster)
    pod = kube.store.get("pods", "default", "pending")
    assert pod is not None
    reply = ext.filter({"Pod": pod, "NodeNames": ["n1", "n2"]}, NOW)
    assert reply["NodeNames"] == ["n1", "n2"]
    uid = pod["metadata"]["uid"]
    result = await ext.bind(
        {"PodName": "pending", "PodNamespace": "default", "PodUID": uid, "Node": "n2"}, NOW
    )
    assert result == {"Error": ""}
    stored = await kube.wait_for_object(
        "pods", "default", "pending", lambda p: p["spec"].get("nodeName") == "n2"
    )
    assert stored["metadata"]["annotations"]["gpuscale.io/gpu-indices"] == "1"
    # the watch shows the bound pod: the reservation gives way to accounting
    await wait_until(cluster, lambda: cluster.state.reservations == {})
    g = cluster.state.gpus("n2", NOW)
    assert not isinstance(g, str)
    assert [d.free_mib for d in g.devices] == [1920, 81920 - 20000]
    # binding again is refused before any write: the annotation keeps naming the right device
    again = await ext.bind(
        {"PodName": "pending", "PodNamespace": "default", "PodUID": uid, "Node": "n1"}, NOW
    )
    assert "already bound to n2" in again["Error"]
    assert cluster.state.reservations == {}
    # the API refuses a second binding too (409), should the cache lag behind
    with pytest.raises(BindError, match="409"):
        await cluster.bind(namespace="default", name="pending", uid=uid, node="n1", gpu_indices=())


async def test_binder_errors(cluster: KubeCluster) -> None:
    with pytest.raises(BindError, match="404"):
        await cluster.bind(namespace="default", name="ghost", uid="", node="n1", gpu_indices=())
    assert await cluster.get_pod("default", "ghost") is None
    got = await cluster.get_pod("default", "pending")
    assert got is not None and orjson.dumps(got)


async def test_paged_list(kube: KubeStandIn, kube_client: Any) -> None:
    for i in range(5):
        kube.store.create(pod_obj(f"p{i}", 1000))
    c = KubeCluster(kube_client, ClusterState(), page_size=2)
    task = asyncio.create_task(c.run())
    try:
        await wait_until(c, lambda: c.ready)
        assert len(c.state.pods) == 5
        lists = [r for r in kube.requests if r.path == "/api/v1/pods" and not r.watch]
        assert len(lists) == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
