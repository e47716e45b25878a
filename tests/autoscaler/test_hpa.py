"""The HPA body (pure) and its reconciliation against the API stand-in."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes.aio import client as kclient

from autoscaler.hpa import (
    HpaReconciler,
    NotOurs,
    build_hpa,
    covers,
    owned_by,
    supports_tolerance,
)
from tests.autoscaler.helpers import make_policy, policy_configmap
from tests.support.kube_standin import KubeStandIn

NS = "inference"


def test_body_follows_the_policy_and_is_owned_by_the_configmap() -> None:
    policy = make_policy("llama", NS, min_replicas=2, max_replicas=9)
    body = build_hpa(policy, "uid-1", tolerance=True)
    assert body["metadata"]["name"] == "gpuscale-llama"
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpuscale"
    (owner,) = body["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "llama",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": False,
    }
    spec = body["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llama",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 9)
    (metric,) = spec["metrics"]
    assert metric == {
        "type": "External",
        "external": {
            "metric": {
                "name": "gpuscale_desired_replicas",
                "selector": {"matchLabels": {"gpuscale.io/policy": "llama"}},
            },
            "target": {"type": "AverageValue", "averageValue": "1"},
        },
    }
    for direction in ("scaleUp", "scaleDown"):
        rules = spec["behavior"][direction]
        assert rules["stabilizationWindowSeconds"] == 0
        assert rules["selectPolicy"] == "Max"
        assert rules["tolerance"] == "0"
        assert {p["type"] for p in rules["policies"]} == {"Percent", "Pods"}


def test_tolerance_is_left_out_for_older_servers() -> None:
    body = build_hpa(make_policy(), "u", tolerance=False)
    assert all("tolerance" not in r for r in body["spec"]["behavior"].values())


@pytest.mark.parametrize("version", ["1.33.0", "1.35.0"])
def test_body_passes_the_kubernetes_schema(version: str) -> None:
    body = build_hpa(make_policy(), "u", tolerance=version >= "1.35")
    kubernetes_validate.validate(body, version, strict=True)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ({"major": "1", "minor": "35"}, True),
        ({"major": "1", "minor": "36+"}, True),
        ({"major": "1", "minor": "34"}, False),
        ({"major": "", "minor": "", "gitVersion": "v1.35.2-gke.1"}, True),
        ({"gitVersion": "v1.30.0"}, False),
        ({}, False),
    ],
)
def test_tolerance_support_from_server_version(version: dict[str, str], expected: bool) -> None:
    assert supports_tolerance(version) is expected


def test_covers_ignores_server_defaults_but_not_our_fields() -> None:
    wanted = {"spec": {"a": 1, "list": [{"x": "1"}]}}
    assert covers({"spec": {"a": 1, "b": 2, "list": [{"x": 1, "y": 0}]}, "status": {}}, wanted)
    assert not covers({"spec": {"a": 2, "list": [{"x": "1"}]}}, wanted)
    assert not covers({"spec": {"a": 1, "list": []}}, wanted)
    assert not covers({"spec": {"list": [{"x": "1"}]}}, wanted)


def test_ownership_needs_label_and_controller_reference() -> None:
    ours = build_hpa(make_policy(), "u", tolerance=False)
    assert owned_by(ours)
    assert owned_by(ours, "u")
    assert not owned_by(ours, "other")
    unlabelled: dict[str, Any] = {**ours, "metadata": {**ours["metadata"], "labels": {}}}
    assert not owned_by(unlabelled)
    orphan: dict[str, Any] = {**ours, "metadata": {**ours["metadata"], "ownerReferences": []}}
    assert not owned_by(orphan)


async def test_reconciler_creates_leaves_alone_and_updates(
    kube: KubeStandIn, kube_client: Any
) -> None:
    cm = kube.store.create(policy_configmap(make_policy("llama", NS)))
    uid = cm["metadata"]["uid"]
    hpas = HpaReconciler(kclient.AutoscalingV2Api(kube_client), tolerance=True)

    assert (await hpas.ensure(make_policy("llama", NS), uid)).action == "created"
    assert (await hpas.ensure(make_policy("llama", NS), uid)).action == "unchanged"
    puts = len(kube.requests_matching("PUT", "*/horizontalpodautoscalers/*"))
    assert puts == 0

    outcome = await hpas.ensure(make_policy("llama", NS, max_replicas=7), uid)
    assert outcome.action == "replaced"
    stored = kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama")
    assert stored is not None and stored["spec"]["maxReplicas"] == 7


async def test_reconciler_rereads_and_retries_on_conflict(
    kube: KubeStandIn, kube_client: Any
) -> None:
    cm = kube.store.create(policy_configmap(make_policy("llama", NS)))
    uid = cm["metadata"]["uid"]
    hpas = HpaReconciler(kclient.AutoscalingV2Api(kube_client), tolerance=True)
    await hpas.ensure(make_policy("llama", NS), uid)
    kube.faults.fail("PUT", "*/horizontalpodautoscalers/gpuscale-llama", status=409, times=2)

    outcome = await hpas.ensure(make_policy("llama", NS, max_replicas=5), uid)

    assert outcome.action == "replaced"
    stored = kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama")
    assert stored is not None and stored["spec"]["maxReplicas"] == 5
    gets = kube.requests_matching("GET", "*/horizontalpodautoscalers/gpuscale-llama")
    assert len(gets) >= 4  # first read, then one re-read per conflict


async def test_reconciler_never_touches_a_foreign_hpa(kube: KubeStandIn, kube_client: Any) -> None:
    cm = kube.store.create(policy_configmap(make_policy("llama", NS)))
    foreign = build_hpa(make_policy("llama", NS, max_replicas=3), "someone", tolerance=False)
    foreign["metadata"]["labels"] = {"team": "other"}
    foreign["metadata"]["ownerReferences"] = []
    kube.store.create(foreign)
    hpas = HpaReconciler(kclient.AutoscalingV2Api(kube_client), tolerance=False)

    with pytest.raises(NotOurs, match="not managed by gpuscale"):
        await hpas.ensure(make_policy("llama", NS), cm["metadata"]["uid"])
    assert (await hpas.delete(NS, "llama", None)).action == "absent"

    stored = kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama")
    assert stored is not None and stored["spec"]["maxReplicas"] == 3
    assert not kube.requests_matching("PUT", "*/horizontalpodautoscalers/*")
    assert not kube.requests_matching("DELETE", "*/horizontalpodautoscalers/*")


async def test_reconciler_deletes_its_own_hpa(kube: KubeStandIn, kube_client: Any) -> None:
    cm = kube.store.create(policy_configmap(make_policy("llama", NS)))
    hpas = HpaReconciler(kclient.AutoscalingV2Api(kube_client), tolerance=False)
    await hpas.ensure(make_policy("llama", NS), cm["metadata"]["uid"])

    assert (await hpas.delete(NS, "llama", cm["metadata"]["uid"])).action == "deleted"
    assert kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama") is None
    assert (await hpas.delete(NS, "llama", None)).action == "absent"


async def test_server_that_drops_tolerance_is_not_rewritten_forever(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.git_version = "v1.33.0"  # the stand-in drops `tolerance`, as a gated-off server does
    cm = kube.store.create(policy_configmap(make_policy("llama", NS)))
    hpas = HpaReconciler(kclient.AutoscalingV2Api(kube_client), tolerance=True)
    await hpas.ensure(make_policy("llama", NS), cm["metadata"]["uid"])

    assert (await hpas.ensure(make_policy("llama", NS), cm["metadata"]["uid"])).action == (
        "unchanged"
    )
    assert hpas.tolerance is False
