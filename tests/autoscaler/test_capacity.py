"""The controller when the cluster has no room, and when no count meets the SLO: against the API
stand-in (pods, Deployments, ConfigMaps, Events through the real client) and a Prometheus that
answers from a table."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from autoscaler.pending import is_unschedulable
from policies.parse import load_policy_file
from policies.schema import ModelCapacityMetric, QueueDepthMetric, ServingSlo, metric_inputs
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    fast_behavior,
    make_policy,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.support.kube_standin import KubeStandIn

NS = "inference"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'


def _pod(name: str, app: str, reason: str | None = "Unschedulable") -> dict[str, Any]:
    conditions = []
    if reason is not None:
        message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
        conditions = [
            {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"containers": [{"name": "server", "image": "vllm"}]},
        "status": {"phase": "Pending", "conditions": conditions},
    }


def _create(kube: KubeStandIn, pod: dict[str, Any]) -> None:
    """Create the pod (the API resets its status), then report as the scheduler would."""
    kube.store.create(pod)
    kube.store.patch("pods", NS, pod["metadata"]["name"], {"status": pod["status"]})


def _placed(kube: KubeStandIn, name: str) -> None:
    """What the scheduler and the kubelet do to a pod once a GPU frees up."""
    scheduled = [{"type": "PodScheduled", "status": "True"}]
    kube.store.patch(
        "pods", NS, name, {"spec": {"nodeName": "gpu-1"}, "status": {"conditions": scheduled}}
    )
    kube.store.patch("pods", NS, name, {"status": {"phase": "Running"}})


def _status(kube: KubeStandIn, name: str) -> dict[str, Any] | None:
    cm = kube.store.get("configmaps", NS, name)
    text = ((cm or {}).get("metadata", {}).get("annotations") or {}).get("gpuscale.io/status")
    return json.loads(text) if text else None


def _reasons(kube: KubeStandIn, name: str) -> list[str]:
    return [
        e["reason"] for e in kube.store.list("events", NS) if e["involvedObject"]["name"] == name
    ]


def test_only_pods_the_scheduler_found_no_room_for_count() -> None:
    assert is_unschedulable(_pod("a", "llama"))
    assert not is_unschedulable(_pod("a", "llama", reason="SchedulingGated"))
    assert not is_unschedulable(_pod("a", "llama", reason=None))
    assert not is_unschedulable({"status": {"conditions": [{"type": "PodScheduled"}]}})


async def test_unschedulable_pods_hold_the_count_and_it_recovers_when_they_are_placed(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS, metrics=(QueueDepthMetric("queue", QUEUE, 4.0),))
    kube.store.create(deployment("llama", NS, 5))  # the HPA asked for 5 ...
    for i in range(2):
        _create(kube, _pod(f"llama-run-{i}", "llama", reason=None))
        _placed(kube, f"llama-run-{i}")
    for i in range(3):  # ... and 3 of them find no GPU
        _create(kube, _pod(f"llama-{i}", "llama"))
    _create(kube, _pod("other-0", "other"))  # another workload's: not ours
    _create(kube, _pod("llama-gated", "llama", reason="SchedulingGated"))  # not for room
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[QUEUE] = 40.0  # wants 10
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        store = rc.controller.store
        status = await wait_until(
            lambda: (s := _status(kube, "llama")) and s["state"] == "CapacityLimited" and s
        )
        assert status["unschedulablePods"] == 3
        assert "3 pods of the target unschedulable" in status["reason"]
        assert status["desiredReplicas"] == 5
        seen = store.get(NS, "llama").decided_at
        await wait_until(lambda: store.get(NS, "llama").decided_at > seen + 2.5)  # 3 more ticks
        assert store.get(NS, "llama").replicas == 5  # no ratchet
        assert _reasons(kube, "llama").count("CapacityLimited") == 1  # once, not per tick
        assert rc.controller.policy_states()["CapacityLimited"] == 1

        fake_prometheus.answers[QUEUE] = 8.0  # the load goes: scale-down is not blocked
        await wait_until(lambda: store.get(NS, "llama").replicas == 2)
        fake_prometheus.answers[QUEUE] = 40.0
        await wait_until(lambda: store.get(NS, "llama").replicas == 5)

        for i in range(3):  # GPUs free up
            _placed(kube, f"llama-{i}")
        await wait_until(lambda: store.get(NS, "llama").replicas == 10)
        status = await wait_until(
            lambda: (s := _status(kube, "llama")) and s["state"] == "Active" and s
        )
        assert "unschedulablePods" not in status
        await wait_until(lambda: "CapacityAvailable" in _reasons(kube, "llama"))
        assert _reasons(kube, "llama").count("CapacityLimited") == 1


async def test_an_unreachable_ttft_caps_below_max_and_the_status_says_so(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    [example] = load_policy_file("policies/examples/llm-serving-model.yaml")
    metric = example.metrics[0]
    assert isinstance(metric, ModelCapacityMetric)
    metric = replace(metric, slo=ServingSlo(ttft=0.01))  # below a 2000-token prefill
    policy = replace(
        example, name="llama", metrics=(metric,), interval=1.0, behavior=fast_behavior()
    )
    policy = replace(policy, target=replace(policy.target, name="llama"))
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    queries = [q for _, q in metric_inputs(metric)]
    fake_prometheus.answers.update(zip(queries, (40.0, 80_000.0, 8000.0), strict=True))
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        published = await wait_until(lambda: rc.controller.store.get(NS, "llama"))
        assert 1 < published.replicas < policy.replicas.max
        status = await wait_until(lambda: _status(kube, "llama"))
        assert status["state"] == "Active"
        assert status["sloUnreachable"] == ["capacity"]
        assert "TTFT bound 10ms is below" in status["reason"]
