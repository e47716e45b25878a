"""Scenario: a policy with ``replicas.min: 0`` on Kubernetes 1.37 (HPAScaleToZero beta, on).

The real HPA, fed by the controller's external metric, takes an idle Deployment from 1 to 0
replicas and wakes it (0 → 1) when a request waits. The HPA keeps ``minReplicas: 0`` as stored
by the API server (a server without the feature gate would refuse it at validation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.autoscaler.helpers import metric_count, metric_via_api
from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.install import Installed, apply, running_controller
from tests.e2e.kube import api, deployment, eventually, namespace, policy_configmap, spec_replicas
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

NS = "idle-at-night"
NAME = "embeddings"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
        "replicas": {"min": 0, "max": 4},
        "interval": "1s",
        "metrics": [{"name": "queue", "type": "queueDepth", "query": QUEUE, "targetPerReplica": 2}],
        "behavior": {"scaleDown": {"stabilizationWindow": "0s"}},
    }


@pytest.fixture(scope="module")
def controller(installed: Installed, prometheus: PrometheusServer) -> Iterator[Process]:
    with running_controller(
        installed, name="gpuscale-controller-zero", prometheus_url=prometheus.url
    ) as proc:
        yield proc


async def _replicas(admin_client: Any) -> int:
    return await spec_replicas(admin_client, NS, NAME)


async def test_idle_goes_to_zero_and_a_waiting_request_wakes_it(
    control_plane: ControlPlane,
    controller: Process,
    vllm_server: InferenceServer,
    prometheus: PrometheusServer,
    admin_client: Any,
) -> None:
    vllm_server.set_waiting(0)
    await prometheus.wait_for_value(QUEUE, lambda v: v == 0)
    apply(control_plane, [namespace(NS), deployment(NAME, NS, 1)])
    apply(control_plane, [policy_configmap(NAME, NS, _policy())], manager="sre")

    hpas = api(admin_client, "AutoscalingV2Api")
    hpa = await eventually(
        "HPA created",
        lambda: hpas.list_namespaced_horizontal_pod_autoscaler(NS),
        lambda found: len(found.items) == 1,
        within=30,
    )
    assert hpa.items[0].spec.min_replicas == 0
    await eventually("scaled to 0", lambda: _replicas(admin_client), lambda n: n == 0, within=90)
    code, body = await metric_via_api(admin_client, NS, NAME)
    assert code == 200 and metric_count(body) == 0

    vllm_server.set_waiting(1)
    await eventually("woken to 1", lambda: _replicas(admin_client), lambda n: n == 1, within=90)
    code, body = await metric_via_api(admin_client, NS, NAME)
    assert code == 200 and metric_count(body) == 1
