"""The API stand-in through the official `kubernetes.aio` client: CRUD, conflicts, subresources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.support.kube_standin import KubeStandIn


def _status(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body or "{}")
    return body


def _cm(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


async def test_configmap_create_get_list_and_three_patch_types(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    created = await v1.create_namespaced_config_map("inference", _cm("a", app="x"))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    rv0 = int(created.metadata.resource_version)

    got = await v1.read_namespaced_config_map("a", "inference")
    assert got.data == {"k": "v"} and got.metadata.resource_version == str(rv0)

    smp = await v1.patch_namespaced_config_map("a", "inference", {"data": {"k2": "v2"}})
    assert smp.data == {"k": "v", "k2": "v2"}
    jp = await v1.patch_namespaced_config_map(
        "a",
        "inference",
        [{"op": "test", "path": "/data/k", "value": "v"}, {"op": "remove", "path": "/data/k"}],
    )
    assert jp.data == {"k2": "v2"}
    merge = await v1.patch_namespaced_config_map(
        "a", "inference", {"data": {"k2": None}}, _content_type="application/merge-patch+json"
    )
    assert merge.data is None or merge.data == {}
    assert int(merge.metadata.resource_version) == rv0 + 3

    await v1.create_namespaced_config_map("other", _cm("b"))
    everywhere = await v1.list_config_map_for_all_namespaces()
    assert [(i.metadata.namespace, i.metadata.name) for i in everywhere.items] == [
        ("inference", "a"),
        ("other", "b"),
    ]
    assert int(everywhere.metadata.resource_version) == rv0 + 4
    assert len((await v1.list_namespaced_config_map("other")).items) == 1


async def test_json_patch_failed_test_is_422_and_changes_nothing(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    before = await v1.create_namespaced_config_map("ns", _cm("a"))
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_config_map(
            "ns",
            "ns",
            [{"op": "test", "path": "/data/k", "value": "other"}],
        )
    assert err.value.status == 404  # wrong name first: NotFound wins
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_config_map(
            "a",
            "ns",
            [
                {"op": "replace", "path": "/data/k", "value": "changed"},
                {"op": "test", "path": "/data/k", "value": "v"},
            ],
        )
    assert err.value.status == 422
    after = await v1.read_namespaced_config_map("a", "ns")
    assert after.data == {"k": "v"}
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_create_twice_is_409_already_exists(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("a"))
    with pytest.raises(ApiException) as err:
        await v1.create_namespaced_config_map("ns", _cm("a"))
    assert err.value.status == 409
    assert _status(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'configmaps "a" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "a", "kind": "configmaps"},
        "code": 409,
    }


async def test_stale_update_is_409_conflict_and_fresh_update_wins(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    first = await v1.create_namespaced_config_map("ns", _cm("a"))
    await v1.patch_namespaced_config_map("a", "ns", {"data": {"k": "w"}})
    first.data = {"k": "stale"}
    with pytest.raises(ApiException) as err:
        await v1.replace_namespaced_config_map("a", "ns", first)
    assert err.value.status == 409
    status = _status(err.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    fresh = await v1.read_namespaced_config_map("a", "ns")
    fresh.data = {"k": "fresh"}
    replaced = await v1.replace_namespaced_config_map("a", "ns", fresh)
    assert replaced.data == {"k": "fresh"}
    stale_patch = {"metadata": {"resourceVersion": first.metadata.resource_version}}
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_config_map("a", "ns", stale_patch)
    assert err.value.status == 409


async def test_missing_object_is_404_not_found_status(kube_client: Any) -> None:
    hpa: Any = client.AutoscalingV2Api(kube_client)
    with pytest.raises(ApiException) as err:
        await hpa.read_namespaced_horizontal_pod_autoscaler("nope", "ns")
    assert err.value.status == 404
    assert _status(err.value)["message"] == (
        'horizontalpodautoscalers.autoscaling "nope" not found'
    )
    assert _status(err.value)["details"] == {
        "name": "nope",
        "group": "autoscaling",
        "kind": "horizontalpodautoscalers",
    }


async def test_noop_patch_keeps_resource_version(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    created = await v1.create_namespaced_config_map("ns", _cm("a"))
    same = await v1.patch_namespaced_config_map("a", "ns", {"data": {"k": "v"}})
    assert same.metadata.resource_version == created.metadata.resource_version


def _hpa(name: str, **behavior: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "gpuscale_desired_replicas"},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": behavior,
        },
    }


async def test_hpa_crud_status_subresource_and_generation(kube_client: Any) -> None:
    api: Any = client.AutoscalingV2Api(kube_client)
    created = await api.create_namespaced_horizontal_pod_autoscaler(
        "ns", _hpa("gpuscale-a", scaleUp={"stabilizationWindowSeconds": 0, "tolerance": "0"})
    )
    assert created.metadata.generation == 1
    assert created.spec.behavior.scale_up.tolerance == "0"
    created.spec.max_replicas = 20
    updated = await api.replace_namespaced_horizontal_pod_autoscaler("gpuscale-a", "ns", created)
    assert updated.metadata.generation == 2 and updated.spec.max_replicas == 20
    status = await api.patch_namespaced_horizontal_pod_autoscaler_status(
        "gpuscale-a", "ns", {"status": {"currentReplicas": 3, "desiredReplicas": 4}}
    )
    assert status.status.desired_replicas == 4 and status.metadata.generation == 2
    # A write to the main resource cannot change status.
    again = await api.patch_namespaced_horizontal_pod_autoscaler(
        "gpuscale-a", "ns", {"status": {"desiredReplicas": 99}}
    )
    assert again.status.desired_replicas == 4
    listed = await api.list_horizontal_pod_autoscaler_for_all_namespaces()
    assert [h.metadata.name for h in listed.items] == ["gpuscale-a"]
    await api.delete_namespaced_horizontal_pod_autoscaler("gpuscale-a", "ns")
    assert (await api.list_namespaced_horizontal_pod_autoscaler("ns")).items == []


async def test_hpa_validation_is_422_invalid(kube_client: Any) -> None:
    api: Any = client.AutoscalingV2Api(kube_client)
    bad = _hpa("x", scaleUp={"policies": [{"type": "Pods", "value": 4, "periodSeconds": 0}]})
    bad["spec"]["minReplicas"] = 11
    with pytest.raises(ApiException) as err:
        await api.create_namespaced_horizontal_pod_autoscaler("ns", bad)
    assert err.value.status == 422
    fields = {c["field"] for c in _status(err.value)["details"]["causes"]}
    assert fields == {"spec.maxReplicas", "spec.behavior.scaleUp.policies[0].periodSeconds"}


async def test_tolerance_dropped_before_v1_35(kube: KubeStandIn, kube_client: Any) -> None:
    kube.git_version = "v1.34.2"
    version = await client.VersionApi(kube_client).get_code()
    assert (version.major, version.minor) == ("1", "34")
    api: Any = client.AutoscalingV2Api(kube_client)
    created = await api.create_namespaced_horizontal_pod_autoscaler(
        "ns", _hpa("a", scaleDown={"tolerance": "0", "stabilizationWindowSeconds": 60})
    )
    assert created.spec.behavior.scale_down.tolerance is None
    assert created.spec.behavior.scale_down.stabilization_window_seconds == 60


async def test_deployment_scale_subresource(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "llama", "namespace": "ns"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "llama"}},
                "template": {
                    "metadata": {"labels": {"app": "llama"}},
                    "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
                },
            },
        }
    )
    apps: Any = client.AppsV1Api(kube_client)
    scale = await apps.read_namespaced_deployment_scale("llama", "ns")
    assert scale.spec.replicas == 2 and scale.status.selector == "app=llama"
    patched = await apps.patch_namespaced_deployment_scale("llama", "ns", {"spec": {"replicas": 5}})
    assert patched.spec.replicas == 5
    deployment = await apps.read_namespaced_deployment("llama", "ns")
    assert deployment.spec.replicas == 5 and deployment.status.ready_replicas == 5
    scale.spec.replicas = 7
    with pytest.raises(ApiException) as err:
        await apps.replace_namespaced_deployment_scale("llama", "ns", scale)
    assert err.value.status == 409
    listed = await apps.list_deployment_for_all_namespaces()
    assert [d.metadata.name for d in listed.items] == ["llama"]


async def test_leases_optimistic_concurrency(kube_client: Any) -> None:
    coord: Any = client.CoordinationV1Api(kube_client)
    body = {"metadata": {"name": "gpuscale-controller"}, "spec": {"holderIdentity": "a"}}
    lease = await coord.create_namespaced_lease("gpuscale-system", body)
    mine = await coord.read_namespaced_lease("gpuscale-controller", "gpuscale-system")
    mine.spec.holder_identity = "b"
    await coord.replace_namespaced_lease("gpuscale-controller", "gpuscale-system", mine)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:
        await coord.replace_namespaced_lease("gpuscale-controller", "gpuscale-system", lease)
    assert err.value.status == 409
    final = await coord.read_namespaced_lease("gpuscale-controller", "gpuscale-system")
    assert final.spec.holder_identity == "b"


async def test_events_in_both_apis(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_event(
        "ns",
        {
            "metadata": {"generateName": "llama."},
            "involvedObject": {"kind": "ConfigMap", "name": "llama", "namespace": "ns"},
            "reason": "Scaled",
            "message": "2 -> 4",
            "type": "Normal",
        },
    )
    listed = await core.list_namespaced_event("ns", field_selector="involvedObject.name=llama")
    assert [e.reason for e in listed.items] == ["Scaled"]
    assert listed.items[0].metadata.name.startswith("llama.")
    events: Any = client.EventsV1Api(kube_client)
    with pytest.raises(ApiException) as err:
        await events.create_namespaced_event(
            "ns", {"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00Z", "reason": "X"}
        )

    assert err.value.status == 422
    await events.create_namespaced_event(
        "ns",
        {
            "metadata": {"name": "e2"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "gpuscale.io/controller",
            "reportingInstance": "pod-1",
            "action": "Scale",
            "reason": "Scaled",
            "type": "Normal",
            "regarding": {"kind": "ConfigMap", "name": "llama", "namespace": "ns"},
        },
    )
    assert [e.metadata.name for e in (await events.list_namespaced_event("ns")).items] == ["e2"]


async def test_pod_binding_sets_node_once(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    created = await v1.create_namespaced_pod("ns", pod)
    assert created.status.phase == "Pending"
    binding = {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "gpu-1"}}
    # The real server answers a Status, which the generated client cannot turn into a
    # V1Binding, so callers use the raw variant (as gpuscale's extender must).
    resp = await v1.create_namespaced_pod_binding_without_preload_content("p", "ns", binding)
    assert resp.status == 201
    assert json.loads(await resp.read())["status"] == "Success"
    bound = await v1.read_namespaced_pod("p", "ns")
    assert bound.spec.node_name == "gpu-1"
    assert [(c.type, c.status) for c in bound.status.conditions] == [("PodScheduled", "True")]
    again = {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "gpu-2"}}
    resp = await v1.create_namespaced_binding_without_preload_content("ns", again)
    assert resp.status == 409
    assert "already assigned to node" in json.loads(await resp.read())["message"]
    unscheduled = await v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=")
    assert unscheduled.items == []
    on_node = await v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-1")
    assert [p.metadata.name for p in on_node.items] == ["p"]


async def test_nodes_are_cluster_scoped_and_patchable(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.put(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.count": "8"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }
    )
    v1: Any = client.CoreV1Api(kube_client)
    node = await v1.patch_node("gpu-1", {"metadata": {"annotations": {"gpuscale.io/gpus": "[]"}}})
    assert node.metadata.annotations == {"gpuscale.io/gpus": "[]"}
    assert node.status.allocatable == {"nvidia.com/gpu": "8"}
    nodes = await v1.list_node(label_selector="nvidia.com/gpu.count")
    assert [n.metadata.name for n in nodes.items] == ["gpu-1"]
    assert (await v1.list_node(label_selector="!nvidia.com/gpu.count")).items == []


async def test_owner_deletion_garbage_collects_dependents(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    owner = await v1.create_namespaced_config_map("ns", _cm("policy"))
    hpa = _hpa("gpuscale-policy")
    hpa["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "policy", "uid": owner.metadata.uid}
    ]
    api: Any = client.AutoscalingV2Api(kube_client)
    await api.create_namespaced_horizontal_pod_autoscaler("ns", hpa)
    await v1.delete_namespaced_config_map("policy", "ns")
    assert (await api.list_namespaced_horizontal_pod_autoscaler("ns")).items == []


async def test_finalizers_hold_deletion_until_removed(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    body = _cm("a")
    body["metadata"]["finalizers"] = ["gpuscale.io/cleanup"]
    await v1.create_namespaced_config_map("ns", body)
    await v1.delete_namespaced_config_map("a", "ns")
    terminating = await v1.read_namespaced_config_map("a", "ns")
    assert terminating.metadata.deletion_timestamp is not None
    await v1.patch_namespaced_config_map("a", "ns", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_config_map("a", "ns")
    assert err.value.status == 404


async def test_pagination_and_expired_continue_token(kube: KubeStandIn, kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    for i in range(5):
        await v1.create_namespaced_config_map("ns", _cm(f"cm-{i}"))
    page = await v1.list_namespaced_config_map("ns", limit=2)
    names = [c.metadata.name for c in page.items]
    while page.metadata._continue:
        page = await v1.list_namespaced_config_map("ns", limit=2, _continue=page.metadata._continue)
        names += [c.metadata.name for c in page.items]
    assert names == [f"cm-{i}" for i in range(5)]
    first = await v1.list_namespaced_config_map("ns", limit=2)
    await v1.create_namespaced_config_map("ns", _cm("later"))
    kube.compact()
    with pytest.raises(ApiException) as err:
        await v1.list_namespaced_config_map("ns", limit=2, _continue=first.metadata._continue)
    assert err.value.status == 410 and _status(err.value)["reason"] == "Expired"


async def test_bad_selector_is_400(kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as err:
        await v1.list_namespaced_config_map("ns", label_selector="a in (b")
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        await v1.list_namespaced_config_map("ns", field_selector="data.k=v")
    assert err.value.status == 400


async def test_discovery_documents(kube_client: Any) -> None:
    groups = await client.ApisApi(kube_client).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"apps", "autoscaling", "coordination.k8s.io", "events.k8s.io"} <= names
    resources = await client.AutoscalingV2Api(kube_client).get_api_resources()
    assert resources.group_version == "autoscaling/v2"
    assert "horizontalpodautoscalers/status" in {r.name for r in resources.resources}
    core = await client.CoreV1Api(kube_client).get_api_resources()
    assert {"configmaps", "pods/binding", "nodes", "events"} <= {r.name for r in core.resources}


async def test_faults_fail_and_log(kube: KubeStandIn, kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("a"))
    kube.faults.fail("GET", "/api/v1/namespaces/*/configmaps/a", status=503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await v1.read_namespaced_config_map("a", "ns")
        assert err.value.status == 503
    assert (await v1.read_namespaced_config_map("a", "ns")).data == {"k": "v"}
    reads = kube.requests_matching("GET", "/api/v1/namespaces/ns/configmaps/a")
    assert len(reads) == 3
    assert kube.requests_matching("PUT") == []
    creates = kube.requests_matching("POST", "*/configmaps")
    assert creates[0].body["metadata"]["name"] == "a"


async def test_injected_latency_applies_to_matching_requests(
    kube: KubeStandIn, kube_client: Any
) -> None:
    import asyncio

    v1: Any = client.CoreV1Api(kube_client)
    kube.faults.delay("GET", "*/configmaps", 30.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await v1.list_namespaced_config_map("ns")
    kube.faults.clear()
    assert (await v1.list_namespaced_config_map("ns")).items == []


async def test_stop_and_start_on_the_same_port_keeps_objects(
    kube: KubeStandIn, kube_client: Any
) -> None:
    import aiohttp

    v1: Any = client.CoreV1Api(kube_client)
    await v1.create_namespaced_config_map("ns", _cm("a"))
    url = kube.url
    await kube.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await v1.read_namespaced_config_map("a", "ns")
    await kube.start()
    assert kube.url == url
    assert (await v1.read_namespaced_config_map("a", "ns")).data == {"k": "v"}


async def test_openapi_v3_shows_tolerance_only_where_supported(kube: KubeStandIn) -> None:
    import aiohttp

    schema = "io.k8s.api.autoscaling.v2.HPAScalingRules"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{kube.url}/openapi/v3") as resp:
            index = await resp.json()
        assert "apis/autoscaling/v2" in index["paths"]
        url = kube.url + index["paths"]["apis/autoscaling/v2"]["serverRelativeURL"]
        async with session.get(url) as resp:
            doc = await resp.json()
        assert "tolerance" in doc["components"]["schemas"][schema]["properties"]
        kube.git_version = "v1.33.4"
        async with session.get(url) as resp:
            doc = await resp.json()
        assert "tolerance" not in doc["components"]["schemas"][schema]["properties"]


async def test_dry_run_and_delete_collection(kube: KubeStandIn, kube_client: Any) -> None:
    v1: Any = client.CoreV1Api(kube_client)
    rv = kube.store.rv
    dry = await v1.create_namespaced_config_map("ns", _cm("dry"), dry_run="All")
    assert dry.metadata.name == "dry"
    assert kube.store.get("configmaps", "ns", "dry") is None and kube.store.rv == rv
    await v1.create_namespaced_config_map("ns", _cm("a", team="x"))
    await v1.create_namespaced_config_map("ns", _cm("b", team="y"))
    await v1.delete_collection_namespaced_config_map("ns", label_selector="team=x")
    assert [c["metadata"]["name"] for c in kube.store.list("configmaps", "ns")] == ["b"]


async def test_malformed_bodies_are_400_not_500(kube: KubeStandIn) -> None:
    import aiohttp

    url = f"{kube.url}/api/v1/namespaces/ns/configmaps"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["reason"] == "BadRequest"
        async with session.post(url, json=["a list"]) as resp:
            assert resp.status == 400
        async with session.get(url, params={"limit": "many"}) as resp:
            assert resp.status == 400
        async with session.get(f"{kube.url}/apis/nope/v1/things") as resp:
            assert resp.status == 404
    assert kube.internal_errors == []
