"""Issue #26, when the cluster has no GPU left, with every part real: the queue wants 10
replicas, one kwok GPU node holds one of them. The real HPA scales the Deployment up by the
policy's rule, the real kube-scheduler (through the extender) finds no room for the new pods and
marks them ``PodScheduled=False, reason Unschedulable``; the controller sees them through its
pod watch, says ``CapacityLimited`` with their count and holds the count where it is, for
several scale-up periods in which it would otherwise have grown to 10. A second GPU node joins:
the pods are placed, the status goes back to ``Active`` and the count grows to 10 by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.gpu_nodes import GpuNode, node_agents
from tests.e2e.install import (
    NODE_AGENT_SA,
    Installed,
    apply,
    delete,
    running_controller,
    second_scheduler,
)
from tests.e2e.kube import (
    deployment,
    eventually,
    namespace,
    policy_configmap,
    policy_event_reasons,
    policy_status,
    spec_replicas,
)
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

NS = "capacity"
NAME = "llama-capacity"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'
PERIOD = 5.0
SMALL = GpuNode("gpu-small", "NVIDIA-L4", 23034, (0,))  # room for one 20000 MiB pod
BIG = GpuNode("gpu-big", "NVIDIA-A100-SXM4-80GB", 81920, (0, 0, 0, 0))  # room for 16 more


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
        "replicas": {"min": 1, "max": 12},
        "interval": "1s",
        "metrics": [{"name": "queue", "type": "queueDepth", "query": QUEUE, "targetPerReplica": 4}],
        "behavior": {
            "scaleUp": {
                "stabilizationWindow": "0s",
                "select": "Max",
                "policies": [{"type": "Pods", "value": 4, "period": f"{PERIOD:g}s"}],
            },
        },
    }


@pytest.fixture(scope="module")
def scheduler(installed: Installed) -> Iterator[tuple[Process, Process]]:
    try:
        with second_scheduler(installed) as running:
            yield running
    finally:
        delete(installed.cp, [SMALL.manifest(), BIG.manifest(), namespace(NS)])


@pytest.fixture(scope="module")
def controller(installed: Installed, prometheus: PrometheusServer) -> Iterator[Process]:
    with running_controller(
        installed, name="gpuscale-controller-capacity", prometheus_url=prometheus.url
    ) as proc:
        yield proc


async def test_no_room_holds_the_count_and_room_lets_it_grow(
    control_plane: ControlPlane,
    installed: Installed,
    scheduler: tuple[Process, Process],
    controller: Process,
    vllm_server: InferenceServer,
    prometheus: PrometheusServer,
    admin_client: Any,
) -> None:
    vllm_server.set_waiting(37)  # ceil(37 / 4) = 10 replicas wanted
    await prometheus.wait_for_value(QUEUE, lambda v: v == 37)
    apply(control_plane, [SMALL.manifest(), namespace(NS)])
    agents = installed.kubeconfig(NODE_AGENT_SA)
    async with node_agents([SMALL], agents):
        workload = deployment(NAME, NS, 1, scheduler="gpuscale", gpus=1, gpu_memory_mib=20000)
        apply(control_plane, [workload])
        apply(control_plane, [policy_configmap(NAME, NS, _policy())], manager="sre")

        # 1 → 5 by the scale-up rule; one pod fits, four find no GPU.
        status = await eventually(
            "status CapacityLimited",
            lambda: policy_status(admin_client, NS, NAME),
            lambda s: s.get("state") == "CapacityLimited" and s.get("unschedulablePods") == 4,
            within=90,
        )
        assert status["desiredReplicas"] == 5, status
        assert "4 pods of the target unschedulable" in status["reason"]
        # Three scale-up periods later the count has not grown (it would be 10 after one).
        for _ in range(int(3 * PERIOD / 0.5)):
            assert await spec_replicas(admin_client, NS, NAME) == 5
            await asyncio.sleep(0.5)
        assert (await policy_event_reasons(admin_client, NS, NAME)).count("CapacityLimited") == 1

        apply(control_plane, [BIG.manifest()])  # GPUs free up
        async with node_agents([BIG], agents):
            await eventually(
                "10 replicas",
                lambda: spec_replicas(admin_client, NS, NAME),
                lambda n: n == 10,
                within=120,
            )
            status = await eventually(
                "status Active",
                lambda: policy_status(admin_client, NS, NAME),
                lambda s: s.get("state") == "Active" and s.get("desiredReplicas") == 10,
                within=90,
            )
            assert "unschedulablePods" not in status
            assert "CapacityAvailable" in await policy_event_reasons(admin_client, NS, NAME)
