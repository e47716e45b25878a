"""Policies by list + watch: add/update/delete, invalid versions, ended watches and 410 Gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kubernetes.aio import client as kclient

from autoscaler.policy_source import PolicyEntry, PolicySource, SourceSettings, interpret
from policies.schema import QueueDepthMetric
from tests.autoscaler.helpers import make_policy, policy_configmap, wait_until
from tests.support.kube_standin import KubeStandIn

NS = "inference"


@contextlib.asynccontextmanager
async def running_source(
    kube_client: Any, namespace: str | None = None
) -> AsyncIterator[tuple[PolicySource, list[tuple[str, PolicyEntry | None]]]]:
    changes: list[tuple[str, PolicyEntry | None]] = []
    source = PolicySource(
        kclient.CoreV1Api(kube_client),
        SourceSettings(namespace=namespace, watch_timeout=60),
        on_change=lambda key, entry: changes.append((key, entry)),
    )
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            await source.listed.wait()
        yield source, changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _broken(name: str) -> dict[str, Any]:
    cm = policy_configmap(make_policy(name, NS))
    cm["data"]["policy.yaml"] = cm["data"]["policy.yaml"].replace("max: 20", "max: lots")
    return cm


def test_interpret_keeps_the_last_good_policy_of_the_same_object() -> None:
    good = policy_configmap(make_policy("llama", NS, max_replicas=5))
    good["metadata"].update(uid="u1", resourceVersion="10")
    first = interpret(good, None)
    assert first is not None and first.policy is not None and first.error is None

    bad = _broken("llama")
    bad["metadata"].update(uid="u1", resourceVersion="11")
    second = interpret(bad, first)
    assert second is not None and second.error is not None
    assert second.policy == first.policy and second.good_resource_version == "10"
    assert "replicas.max" in str(second.error)

    recreated = dict(bad, metadata={**bad["metadata"], "uid": "u2"})
    third = interpret(recreated, second)
    assert third is not None and third.policy is None


def test_with_enforcement_the_running_policy_reads_only_its_namespace() -> None:
    metrics = (QueueDepthMetric("queue", 'sum(vllm:num_requests_waiting{model_name="a"})', 4.0),)
    good = policy_configmap(make_policy("llama", NS, metrics=metrics))
    good["metadata"].update(uid="u1", resourceVersion="10")
    entry = interpret(good, None, "namespace")
    assert entry is not None and entry.error is None and entry.policy is not None
    assert entry.policy.metrics[0].query == (
        f'sum(vllm:num_requests_waiting{{namespace="{NS}",model_name="a"}})'
    )
    unscoped = interpret(good, None)
    assert unscoped is not None and unscoped.policy is not None
    assert unscoped.policy.metrics[0].query == metrics[0].query

    # An edit that reads another team's series is refused; the scoped version keeps running.
    nosy = (QueueDepthMetric("queue", 'sum(vllm:num_requests_waiting{namespace="b"})', 4.0),)
    bad = policy_configmap(make_policy("llama", NS, metrics=nosy))
    bad["metadata"].update(uid="u1", resourceVersion="11")
    second = interpret(bad, entry, "namespace")
    assert second is not None and second.error is not None
    [error] = second.error.errors
    assert error.path == "metrics[0].query"
    assert "namespace enforcement" in error.message and 'namespace="b"' in error.message
    assert second.policy == entry.policy and second.good_resource_version == "10"


def test_list_items_without_kind_are_still_policies() -> None:
    cm = policy_configmap(make_policy("llama", NS))
    del cm["kind"], cm["apiVersion"]
    entry = interpret(cm, None)
    assert entry is not None and entry.policy is not None


async def test_add_update_delete_follow_the_api(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(policy_configmap(make_policy("first", NS)))
    unrelated = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": NS},
    }
    kube.store.create(unrelated)
    async with running_source(kube_client) as (source, changes):
        assert set(source.entries) == {f"{NS}/first"}
        await kube.wait_for_watch("configmaps")

        kube.store.create(policy_configmap(make_policy("second", NS)))
        await wait_until(lambda: f"{NS}/second" in source.entries)

        kube.store.put(policy_configmap(make_policy("second", NS, max_replicas=3)))
        await wait_until(
            lambda: (
                (e := source.entries.get(f"{NS}/second")) is not None
                and e.policy is not None
                and e.policy.replicas.max == 3
            )
        )

        kube.store.delete("configmaps", NS, "first")
        await wait_until(lambda: f"{NS}/first" not in source.entries)
        assert [k for k, e in changes if e is None] == [f"{NS}/first"]


async def test_annotation_writes_are_not_policy_changes(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.store.create(policy_configmap(make_policy("first", NS)))
    async with running_source(kube_client) as (source, changes):
        await kube.wait_for_watch("configmaps")
        before = len(changes)
        kube.store.patch(
            "configmaps", NS, "first", {"metadata": {"annotations": {"gpuscale.io/status": "{}"}}}
        )
        await wait_until(
            lambda: (
                "gpuscale.io/status"
                in (source.entries[f"{NS}/first"].configmap["metadata"].get("annotations") or {})
            )
        )
        assert len(changes) == before


async def test_invalid_update_keeps_the_last_good_version(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.store.create(policy_configmap(make_policy("llama", NS, max_replicas=5)))
    async with running_source(kube_client) as (source, _):
        await kube.wait_for_watch("configmaps")
        kube.store.put(_broken("llama"))
        entry = await wait_until(
            lambda: (e := source.entries.get(f"{NS}/llama")) is not None and e.error and e
        )
        assert entry.policy is not None and entry.policy.replicas.max == 5


async def test_ended_watch_resumes_without_relisting(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(policy_configmap(make_policy("first", NS)))
    async with running_source(kube_client) as (source, _):
        await kube.wait_for_watch("configmaps")
        assert kube.drop_watches() == 1
        kube.store.create(policy_configmap(make_policy("second", NS)))
        await wait_until(lambda: f"{NS}/second" in source.entries)
        assert source.relists == 1


async def test_410_gone_relists_and_loses_nothing(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(policy_configmap(make_policy("kept", NS)))
    kube.store.create(policy_configmap(make_policy("doomed", NS)))
    async with running_source(kube_client) as (source, changes):
        await kube.wait_for_watch("configmaps")
        rule = kube.faults.fail("GET", "/api/v1/configmaps", watch=True, status=500, times=None)
        kube.drop_watches()
        await wait_until(lambda: rule.hits >= 2)
        # While the watch is down: one policy added, one deleted, one changed; history compacted.
        kube.store.create(policy_configmap(make_policy("added", NS)))
        kube.store.delete("configmaps", NS, "doomed")
        kube.store.put(policy_configmap(make_policy("kept", NS, max_replicas=2)))
        kube.compact()
        kube.faults.clear()

        await wait_until(lambda: source.relists >= 2, within=15)
        await wait_until(lambda: set(source.entries) == {f"{NS}/kept", f"{NS}/added"}, within=5)
        assert source.relists == 2  # one relist, for the 410 (the 500s only retried the watch)
        kept = source.entries[f"{NS}/kept"].policy
        assert kept is not None and kept.replicas.max == 2
        added = [k for k, e in changes if e is not None and k == f"{NS}/added"]
        assert len(added) == 1
        assert [k for k, e in changes if e is None] == [f"{NS}/doomed"]


async def test_watch_error_event_410_relists(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(policy_configmap(make_policy("kept", NS)))
    async with running_source(kube_client) as (source, _):
        await kube.wait_for_watch("configmaps")
        source.resource_version = "1"  # as if we had been away long enough to be compacted
        kube.compact()
        kube.drop_watches()
        await wait_until(lambda: source.relists >= 2, within=10)
        assert set(source.entries) == {f"{NS}/kept"}


async def test_one_namespace_only(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create(policy_configmap(make_policy("here", NS)))
    kube.store.create(policy_configmap(make_policy("there", "other")))
    async with running_source(kube_client, namespace=NS) as (source, _):
        assert set(source.entries) == {f"{NS}/here"}
