"""The whole path with real parts: policy ConfigMap → HPA → load → real Prometheus → external
metrics read as the HPA reads them (official client → API stand-in's aggregated path → HTTPS
with the front-proxy client certificate, trust taken from extension-apiserver-authentication)
→ count up → load falls → count down only after the scale-down stabilization window.

The HPA controller itself does not run here; ``emulate_hpa`` plays it with tolerance 0, as our
HPA asks for: it reads our metric the way the HPA does and sets the Deployment's scale.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from policies.schema import LatencyMetric, QueueDepthMetric
from tests.autoscaler.helpers import (
    Certs,
    controller_settings,
    deployment,
    make_policy,
    metric_count,
    metric_via_api,
    policy_configmap,
    register_api_service,
    run_controller,
    wait_until,
)
from tests.support.inference_server import InferenceServer
from tests.support.kube_standin import KubeStandIn
from tests.support.prometheus import PrometheusServer

NS = "inference"
WINDOW = 4.0


@contextlib.asynccontextmanager
async def emulate_hpa(kube: KubeStandIn, api_client: Any) -> AsyncIterator[None]:
    """Play the HPA controller: desired = ceil(value / 1) within min/max, written to the scale."""

    async def loop() -> None:
        while True:
            hpa = kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama")
            if hpa is not None:
                status, body = await metric_via_api(api_client, NS, "llama")
                if status == 200:
                    spec = hpa["spec"]
                    wanted = max(spec["minReplicas"], min(spec["maxReplicas"], metric_count(body)))
                    dep = kube.store.get("deployments", NS, "llama")
                    if dep is not None and dep["spec"]["replicas"] != wanted:
                        kube.store.patch("deployments", NS, "llama", {"spec": {"replicas": wanted}})
            await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def steady_latency(server: InferenceServer, seconds: float) -> AsyncIterator[None]:
    """Finish a few requests every 100 ms so the latency quantile stays defined."""

    async def loop() -> None:
        while True:
            server.observe_latency(seconds, count=5)
            server.add_success(5)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
async def test_policy_to_hpa_to_scaled_count_and_back(
    kube: KubeStandIn,
    inference_server: InferenceServer,
    prometheus: PrometheusServer,
    certs: Certs,
    kube_client: Any,
) -> None:
    queue = 'sum(vllm:num_requests_waiting{model_name="llama"})'
    latency = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(vllm:e2e_request_latency_seconds_bucket{model_name="llama"}[5s])))'
    )
    policy = make_policy(
        "llama",
        NS,
        metrics=(QueueDepthMetric("queue", queue, 4.0), LatencyMetric("latency", latency, 2.0)),
        scale_down_window=WINDOW,
    )
    kube.store.create(deployment("llama", NS, 1))
    assert kube.kubeconfig_path is not None
    # No CA flag: the controller trusts the front-proxy CA the cluster publishes.
    settings = controller_settings(
        prometheus.url, kube.kubeconfig_path, certs, requestheader_client_ca_file=None
    )
    metrics_seen: list[tuple[float, float | None, float | None]] = []

    async with (
        steady_latency(inference_server, 0.4),
        run_controller(settings) as rc,
    ):
        port = rc.running.secure_port
        assert port is not None
        register_api_service(kube, port, certs)
        registry = rc.controller.metrics.registry
        labels = {"namespace": NS, "policy": "llama"}

        # The policy appears: the controller creates the HPA it owns.
        kube.store.create(policy_configmap(policy))
        hpa = await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-llama")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "llama"
        assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ConfigMap"
        assert hpa["spec"]["metrics"][0]["external"]["target"] == {
            "type": "AverageValue",
            "averageValue": "1",
        }

        async def count() -> int | None:
            status, body = await metric_via_api(kube_client, NS, "llama")
            return metric_count(body) if status == 200 else None

        async def count_is(n: int) -> bool:
            return bool(await count() == n)

        async with emulate_hpa(kube, kube_client):
            await wait_until(lambda: count_is(1), within=15)

            # Load rises: 40 waiting requests at 4 per replica → 10 replicas.
            inference_server.set_waiting(40)
            await prometheus.wait_for_value(queue, lambda v: v == 40)
            await wait_until(lambda: count_is(10), within=10)
            await kube.wait_for_object(
                "deployments", NS, "llama", lambda d: d["spec"]["replicas"] == 10
            )

            # Load falls: the recommendation drops at once, the count only after the window.
            inference_server.set_waiting(0)

            def sample() -> bool:
                rec = registry.get_sample_value("gpuscale_recommended_replicas", labels)
                desired = registry.get_sample_value("gpuscale_desired_replicas", labels)
                now = asyncio.get_running_loop().time()
                metrics_seen.append((now, rec, desired))
                return bool(desired == 1)

            await wait_until(sample, within=WINDOW + 12, every=0.1)
            assert await count() == 1

    rec_low = next(t for t, rec, _ in metrics_seen if rec is not None and rec < 10)
    desired_low = next(t for t, _, d in metrics_seen if d is not None and d < 10)
    # Ticks are 1 s apart and sampling is 0.1 s: the window shows up to within one tick.
    assert desired_low - rec_low >= WINDOW - 1.2, metrics_seen
    assert all(d == 10 for t, _, d in metrics_seen if t < desired_low)
    # Every read went through the aggregator, as the HPA's user, with the front-proxy cert.
    forwarded = kube.aggregator.forwarded
    assert forwarded and all(
        h["X-Remote-User"] == "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        for h in forwarded
    )
    events = [e["reason"] for e in kube.store.list("events", NS)]
    assert "DesiredReplicas" in events
