"""Watches through `kubernetes.aio.watch`: order, resume, selectors, bookmarks, 410, drops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.support.kube_standin import KubeStandIn, new_watch


def _cm(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


async def _collect(stream: Any, n: int, within: float = 10.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        async for event in stream:
            events.append(event)
            if len(events) == n:
                break
    return events


async def test_watch_from_rv_sees_added_modified_deleted_in_order(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    start = (await v1.list_namespaced_config_map("ns")).metadata.resource_version
    await v1.create_namespaced_config_map("ns", _cm("a"))
    await v1.patch_namespaced_config_map("a", "ns", {"data": {"k": "w"}})
    await v1.create_namespaced_config_map("elsewhere", _cm("b"))
    await v1.delete_namespaced_config_map("a", "ns")
    w = new_watch()
    stream = w.stream(v1.list_namespaced_config_map, "ns", resource_version=start)
    events = await _collect(stream, 3)
    await w.close()
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    assert events[1]["object"].data == {"k": "w"}


async def test_watch_without_rv_starts_with_current_state_then_live_events(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("old"))
    w = new_watch()
    stream = w.stream(v1.list_config_map_for_all_namespaces)
    first = await _collect(stream, 1)
    assert [(e["type"], e["object"].metadata.name) for e in first] == [("ADDED", "old")]
    await kube.wait_for_watch("configmaps")
    await v1.create_namespaced_config_map("ns2", _cm("new"))
    live = await _collect(stream, 1)
    await w.close()
    assert [(e["type"], e["object"].metadata.namespace) for e in live] == [("ADDED", "ns2")]


async def test_label_selector_watch_turns_label_changes_into_added_and_deleted(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    start = (await v1.list_namespaced_config_map("ns")).metadata.resource_version
    selector = "gpuscale.io/scaling-policy=true"
    await v1.create_namespaced_config_map("ns", _cm("plain"))
    await v1.patch_namespaced_config_map(
        "plain", "ns", {"metadata": {"labels": {"gpuscale.io/scaling-policy": "true"}}}
    )
    await v1.patch_namespaced_config_map(
        "plain", "ns", {"metadata": {"labels": {"gpuscale.io/scaling-policy": None}}}
    )
    w = new_watch()
    stream = w.stream(
        v1.list_namespaced_config_map, "ns", label_selector=selector, resource_version=start
    )
    events = await _collect(stream, 2)
    await w.close()
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    listed = await v1.list_namespaced_config_map("ns", label_selector=selector)
    assert listed.items == []


async def test_bookmarks_carry_the_current_resource_version(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.bookmark_interval = 0.05
    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("a"))
    rv = (await v1.list_namespaced_config_map("ns")).metadata.resource_version
    kube.store.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "ns"}}
    )
    w = new_watch()
    stream = w.stream(
        v1.list_namespaced_config_map, "ns", resource_version=rv, allow_watch_bookmarks=True
    )
    events = await _collect(stream, 2)
    await w.close()
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["raw_object"]["metadata"]["resourceVersion"] == str(kube.store.rv)
    assert w.resource_version == str(kube.store.rv)


async def test_compacted_rv_gives_410_on_the_watch(kube: KubeStandIn, kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    old_rv = (await v1.list_namespaced_config_map("ns")).metadata.resource_version
    await v1.create_namespaced_config_map("ns", _cm("a"))
    kube.compact()
    w = new_watch()
    with pytest.raises(ApiException) as err:
        await _collect(
            w.stream(
                v1.list_namespaced_config_map, "ns", resource_version=old_rv, timeout_seconds=5
            ),
            1,
        )
    assert err.value.status == 410
    assert "too old resource version" in str(err.value.reason)


async def test_history_ring_overflow_expires_old_rvs(kube_client: Any) -> None:
    standin = KubeStandIn(history_size=3)
    await standin.start()
    try:
        standin.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        rv = standin.store.rv
        for i in range(4):
            standin.store.patch("configmaps", "default", "x", {"data": {"i": str(i)}})
        assert standin.store.oldest_watchable_rv > rv
    finally:
        await standin.stop()


async def test_timeout_seconds_ends_the_stream(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    w = new_watch()
    events = []
    async with asyncio.timeout(10):
        async for event in w.stream(v1.list_namespaced_config_map, "ns", timeout_seconds=1):
            events.append(event)
    await w.close()
    assert events == []


async def test_dropped_watch_reconnects_from_last_rv_without_duplicates(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    w = new_watch()
    stream = w.stream(v1.list_namespaced_config_map, "ns")
    pending = asyncio.ensure_future(_collect(stream, 1))
    await kube.wait_for_watch("configmaps")
    await v1.create_namespaced_config_map("ns", _cm("a"))
    first = await pending
    watches_before = len(kube.requests_matching("GET", watch=True))
    assert kube.drop_watches() == 1
    await v1.create_namespaced_config_map("ns", _cm("b"))
    second = await _collect(stream, 1)
    await w.close()
    assert [e["object"].metadata.name for e in first + second] == ["a", "b"]
    resumed = kube.requests_matching("GET", watch=True)[watches_before:]
    assert [r.query.get("resourceVersion") for r in resumed] == [
        first[0]["object"].metadata.resource_version
    ]


async def test_aborted_watch_connection_surfaces_as_a_client_error(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    w = new_watch()
    stream = w.stream(v1.list_namespaced_config_map, "ns", timeout_seconds=30)
    task = asyncio.ensure_future(_collect(stream, 1))
    await kube.wait_for_watch("configmaps")
    kube.drop_watches(abort=True)
    with pytest.raises(Exception) as err:
        await task
    await w.close()
    assert not isinstance(err.value, TimeoutError)


async def test_injected_watch_failure_is_an_api_exception(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    kube.faults.fail("GET", "*/configmaps", status=500, watch=True)
    w = new_watch()
    with pytest.raises(ApiException) as err:
        await _collect(w.stream(v1.list_namespaced_config_map, "ns"), 1)
    await w.close()
    assert err.value.status == 500
    assert (await v1.list_namespaced_config_map("ns")).items == []


async def test_send_initial_events_ends_with_a_marked_bookmark(
    kube: KubeStandIn, kube_client: Any
) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("a"))
    await v1.create_namespaced_config_map("ns", _cm("b"))
    w = new_watch()
    stream = w.stream(
        v1.list_namespaced_config_map,
        "ns",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
    )
    events = await _collect(stream, 3)
    await w.close()
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    marker = events[2]["raw_object"]["metadata"]["annotations"]
    assert marker == {"k8s.io/initial-events-end": "true"}
    w = new_watch()
    with pytest.raises(ApiException) as err:
        await _collect(w.stream(v1.list_namespaced_config_map, "ns", send_initial_events=True), 1)
    await w.close()
    assert err.value.status == 422
