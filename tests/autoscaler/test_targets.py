"""Target replica counts from a watch, with a scale read for what the cache does not hold."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client as kclient

from autoscaler.targets import TargetError, TargetReplicas, spec_replicas
from tests.autoscaler.helpers import deployment, wait_until
from tests.support.kube_standin import KubeStandIn

NS = "inference"


@contextlib.asynccontextmanager
async def targets(kube_client: Any, **options: Any) -> AsyncIterator[TargetReplicas]:
    cache = TargetReplicas(kclient.AppsV1Api(kube_client), **options)
    try:
        yield cache
    finally:
        await cache.close()


def test_spec_replicas_defaults_to_one_like_the_api() -> None:
    assert spec_replicas({"spec": {"replicas": 0}}) == 0
    assert spec_replicas({"spec": {}}) == 1
    assert spec_replicas({}) == 1
    assert spec_replicas({"spec": {"replicas": True}}) == 1


async def test_counts_come_from_the_watch_not_a_get_per_tick(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.store.create(deployment("llama", NS, 3))
    async with targets(kube_client) as cache:
        assert await cache.replicas("apps/v1", "Deployment", NS, "llama") == 3
        await kube.wait_for_watch("deployments")
        reads = cache.reads
        for _ in range(20):
            assert await cache.replicas("apps/v1", "Deployment", NS, "llama") == 3
        assert cache.reads == reads
        kube.store.patch("deployments", NS, "llama", {"spec": {"replicas": 7}})

        async def seven() -> bool:
            return await cache.replicas("apps/v1", "Deployment", NS, "llama") == 7

        await wait_until(seven)
        assert cache.reads == reads
        assert not kube.requests_matching("GET", "*/deployments/llama/scale")[reads:]


async def test_unknown_targets_are_read_once_and_reported(
    kube: KubeStandIn, kube_client: Any
) -> None:
    async with targets(kube_client) as cache:
        with pytest.raises(TargetError, match=f"Deployment {NS}/ghost not found"):
            await cache.replicas("apps/v1", "Deployment", NS, "ghost")
        with pytest.raises(TargetError, match="not supported"):
            await cache.replicas("argoproj.io/v1alpha1", "Rollout", NS, "x")


async def test_without_watch_every_call_reads_the_scale(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.store.create(deployment("llama", NS, 2))
    async with targets(kube_client, watch=False) as cache:
        for _ in range(3):
            assert await cache.replicas("apps/v1", "Deployment", NS, "llama") == 2
        assert cache.reads == 3
        assert kube.watch_count("deployments") == 0


async def test_one_namespace_only(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(deployment("llama", NS, 2))
    async with targets(kube_client, namespace=NS) as cache:
        assert await cache.replicas("apps/v1", "Deployment", NS, "llama") == 2
        await kube.wait_for_watch("deployments")
        watches = kube.requests_matching("GET", "*/deployments", watch=True)
        assert watches and all(
            r.path.startswith(f"/apis/apps/v1/namespaces/{NS}/") for r in watches
        )
