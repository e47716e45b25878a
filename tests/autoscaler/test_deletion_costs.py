"""deletionCost in the controller: pod-deletion-cost annotations follow each pod's requests in
flight, only changed costs are written, at most maxWritesPerTick a tick (API stand-in, a
Prometheus that answers from a table)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from policies.deletion_cost import ANNOTATION
from policies.schema import DeletionCost, QueueDepthMetric
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    make_policy,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.support.kube_standin import KubeStandIn

NS = "inference"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'
IN_FLIGHT = "sum by (pod) (vllm:num_requests_running + vllm:num_requests_waiting)"


def _by_pod(**requests: float) -> dict[str, Any]:
    result = [{"metric": {"pod": p}, "value": [1.0, str(v)]} for p, v in requests.items()]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _costs(kube: KubeStandIn) -> dict[str, str | None]:
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(ANNOTATION)
        for p in kube.store.list("pods", NS)
    }


async def test_deletion_costs_follow_the_requests_in_flight(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS, metrics=(QueueDepthMetric("queue", QUEUE, 4.0),))
    policy = replace(policy, deletion_cost=DeletionCost(IN_FLIGHT, max_writes_per_tick=2))
    kube.store.create(deployment("llama", NS, 3))
    for name in ("llama-a", "llama-b", "llama-c"):
        spec = {"containers": [{"name": "vllm", "image": "vllm"}]}
        meta = {"name": name, "namespace": NS}
        kube.store.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[QUEUE] = 8.0
    fake_prometheus.answers[IN_FLIGHT] = _by_pod(**{"llama-a": 0, "llama-b": 5, "llama-c": 1})
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        costs = rc.controller.costs
        # two writes on the first tick, the third on the next
        await wait_until(lambda: _costs(kube) == {"llama-a": "0", "llama-b": "3", "llama-c": "1"})
        assert costs.patches == 3
        seen = rc.controller.store.get(NS, "llama").decided_at
        await wait_until(lambda: rc.controller.store.get(NS, "llama").decided_at > seen + 1.5)
        assert costs.patches == 3  # unchanged costs are not rewritten

        # b's generations finish, a pod the query names is gone: b is written, nothing fails
        fake_prometheus.answers[IN_FLIGHT] = _by_pod(
            **{"llama-a": 0, "llama-b": 0, "llama-c": 1, "llama-gone": 4}
        )
        await wait_until(lambda: _costs(kube)["llama-b"] == "0")
        seen = rc.controller.store.get(NS, "llama").decided_at
        await wait_until(lambda: rc.controller.store.get(NS, "llama").decided_at > seen + 1.5)
        assert costs.patches == 4
        assert len(kube.requests_matching("PATCH", "*/pods/llama-a")) == 1
        assert len(kube.requests_matching("PATCH", "*/pods/llama-gone")) == 1  # 404, not retried
