"""Scenario: the shipped examples, applied as the policy guide says, scale each other.

``deploy/examples/workloads/llama-chat-deployment.yaml`` and ``deploy/examples/llama-chat.yaml``
are applied unmodified. No kubelet runs vLLM here, so a vLLM-style metrics server stands in for
the Deployment's pods, exporting the model name the Deployment's own ``--served-model-name``
gives vLLM and labelled the way ``deploy/examples/monitoring/prometheus-scrape-config.yaml``
labels a pod's series (its namespace as ``namespace``). If the Deployment, the scrape example
and the policy stop agreeing (a model name, a namespace), the policy sees no series and holds:
this test fails. The controller runs with namespace enforcement on, as deploy/ does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.conftest import ThreadedInferenceServer
from tests.e2e.install import Installed, apply, delete, running_controller
from tests.e2e.kube import api, eventually, namespace, spec_replicas, status_annotation
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DEPLOYMENT = yaml.safe_load((EXAMPLES / "workloads" / "llama-chat-deployment.yaml").read_text())
POLICY = yaml.safe_load((EXAMPLES / "llama-chat.yaml").read_text())
SCRAPE = yaml.safe_load((EXAMPLES / "monitoring" / "prometheus-scrape-config.yaml").read_text())
NS = DEPLOYMENT["metadata"]["namespace"]
NAME = DEPLOYMENT["metadata"]["name"]
WAITING = 37  # at the example's 4 per replica: 10 replicas


def _served_model_name() -> str:
    args = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--served-model-name") + 1])


def _namespace_label() -> str:
    """The label the example scrape config puts the pod's namespace in."""
    [job] = SCRAPE["scrape_configs"]
    [rule] = [
        r
        for r in job["relabel_configs"]
        if r.get("source_labels") == ["__meta_kubernetes_namespace"]
    ]
    return str(rule["target_label"])


@pytest.fixture(scope="module")
def pods() -> Iterator[InferenceServer]:
    """What the Deployment's vLLM pods would export, queue included."""
    threaded = ThreadedInferenceServer()
    threaded.server = InferenceServer(_served_model_name())
    threaded.start()
    try:
        threaded.server.set_waiting(WAITING)
        yield threaded.server
    finally:
        threaded.stop()


@pytest.fixture(scope="module")
def pod_prometheus(
    pods: InferenceServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    prom = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"), [pods.target], labels={_namespace_label(): NS}
    )
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def controller(installed: Installed, pod_prometheus: PrometheusServer) -> Iterator[Process]:
    with running_controller(
        installed, name="gpuscale-controller-examples", prometheus_url=pod_prometheus.url
    ) as proc:
        yield proc


async def _replicas(admin_client: Any) -> int:
    return await spec_replicas(admin_client, NS, NAME)


async def test_the_example_policy_scales_the_example_deployment(
    control_plane: ControlPlane,
    controller: Process,
    pod_prometheus: PrometheusServer,
    admin_client: Any,
) -> None:
    # The autoscaling scenario used the same names; start from the examples alone (its HPA
    # too, so ours is not taken for someone else's while the garbage collector catches up).
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"gpuscale-{NAME}", "namespace": NS},
    }
    delete(control_plane, [POLICY, DEPLOYMENT, hpa])
    hpas = api(admin_client, "AutoscalingV2Api")
    await eventually(
        "earlier objects gone",
        lambda: hpas.list_namespaced_horizontal_pod_autoscaler(NS),
        lambda found: not found.items,
        within=30,
    )
    served = _served_model_name()
    await pod_prometheus.wait_for_value(
        f'sum(vllm:num_requests_waiting{{model_name="{served}"}})', lambda v: v == WAITING
    )
    apply(control_plane, [namespace(NS), DEPLOYMENT])
    apply(control_plane, [POLICY], manager="sre")
    try:
        await eventually(
            "10 replicas", lambda: _replicas(admin_client), lambda n: n == 10, within=150
        )
        cm = await api(admin_client, "CoreV1Api").read_namespaced_config_map(NAME, NS)
        status = status_annotation(cm)
        assert status["state"] == "Active" and status["winner"] == "queue", status
        assert "queue" not in status.get("metricsMissing", []), status
    finally:
        # Its ten Pending pods ask the gpuscale scheduler for GPUs: gone before the scheduling
        # scenarios start, or they would take the GPU nodes those create.
        delete(control_plane, [POLICY, DEPLOYMENT])
        await eventually(
            "the example's pods gone",
            lambda: api(admin_client, "CoreV1Api").list_namespaced_pod(
                NS, label_selector=f"app={NAME}"
            ),
            lambda found: not found.items,
            within=60,
        )
