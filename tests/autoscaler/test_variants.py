"""A policy with variants in the controller, against the API stand-in (Deployments, pods, HPAs,
ConfigMaps and Events through the real client) and a Prometheus that answers from a table: one
decision per tick gives a count per variant, each read by its own HPA through its own External
metric; unschedulable pods of the preferred variant spill its share onto the next one."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.external_metrics import ExternalMetricsSettings, build_app
from autoscaler.store import DecisionStore, Published
from policies.parse import load_policy_file
from policies.schema import ModelCapacityMetric, ScalingPolicy, metric_inputs
from policies.variants import decide_mix, observe, variant_policy
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    metric_count,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.autoscaler.test_capacity import _create, _placed, _pod
from tests.support.inference_server import InferenceServer
from tests.support.kube_aggregator import HPA_USER
from tests.support.kube_standin import KubeStandIn
from tests.support.prometheus import PrometheusServer

NS = "inference"
EXAMPLE = "policies/examples/llm-serving-variants.yaml"
LOAD = (200.0, 160_000.0, 40_000.0)  # req/s, prompt and generated tokens/s: 800 + 200 each


def _policy(cold_start: float = 60.0, window: float = 0.0) -> ScalingPolicy:
    """The example, with its A100 variant at min 1 (the API stand-in is a server without
    HPAScaleToZero, which refuses an HPA with minReplicas 0, as for a one-target policy) and
    a scale-down window of ``window`` seconds (tests of it: tests/policies)."""
    [example] = load_policy_file(EXAMPLE)
    assert example.variants is not None
    h100, a100 = example.variants.targets
    a100 = replace(a100, replicas=replace(a100.replicas, min=1))
    variants = replace(example.variants, targets=(h100, a100))
    down = replace(example.behavior.scale_down, stabilization_window=window)
    behavior = replace(example.behavior, scale_down=down)
    return replace(
        example, interval=0.5, cold_start=cold_start, variants=variants, behavior=behavior
    )


def _answer(fake: FakePrometheus, policy: ScalingPolicy, load: tuple[float, ...]) -> None:
    queries = [q for _, q in metric_inputs(policy.metrics[0])]
    fake.answers.update(zip(queries, load, strict=True))


def _status(kube: KubeStandIn, name: str) -> dict[str, Any] | None:
    cm = kube.store.get("configmaps", NS, name)
    text = ((cm or {}).get("metadata", {}).get("annotations") or {}).get("gpuscale.io/status")
    return json.loads(text) if text else None


def _counts(store: DecisionStore, name: str) -> dict[str, int]:
    return {p.variant: p.replicas for p in store.of_policy(NS, name)}


def _expected(policy: ScalingPolicy, placeable: dict[str, int] | None = None) -> dict[str, int]:
    queries = [k for k, _ in metric_inputs(policy.metrics[0])]
    observed = observe(policy, dict(zip(queries, LOAD, strict=True)), placeable)
    assert observed is not None
    return decide_mix(variant_policy(policy), observed).replicas()


async def test_one_decision_gives_each_variant_its_count_and_its_own_hpa(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = _policy()
    kube.store.create(deployment("llama-h100", NS, 1))
    kube.store.create(deployment("llama-a100", NS, 0))
    kube.store.create(policy_configmap(policy))
    _answer(fake_prometheus, policy, LOAD)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    expected = _expected(policy)
    assert expected == {"h100": 4, "a100": 1}  # H100s cheaper per req/s here; A100 at its min
    async with run_controller(settings) as rc:
        store = rc.controller.store
        await wait_until(lambda: _counts(store, policy.name) == expected)
        assert store.get(NS, policy.name) is None  # no one-target record beside the variants
        for variant, target, bounds in (
            ("h100", "llama-h100", (1, 8)),
            ("a100", "llama-a100", (1, 16)),
        ):
            hpa = await kube.wait_for_object(
                "horizontalpodautoscalers", NS, f"gpuscale-llama-mixed-{variant}"
            )
            spec = hpa["spec"]
            assert spec["scaleTargetRef"]["name"] == target
            assert (spec["minReplicas"], spec["maxReplicas"]) == bounds
            selector = spec["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
            assert selector == {"gpuscale.io/policy": "llama-mixed", "gpuscale.io/variant": variant}
        assert kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama-mixed") is None
        status = await wait_until(
            lambda: (s := _status(kube, policy.name)) and "variants" in s and s
        )
        assert status["state"] == "Active"
        assert [(v["name"], v["desiredReplicas"]) for v in status["variants"]] == [
            ("h100", 4),
            ("a100", 1),
        ]
        assert status["desiredReplicas"] == 5
        assert "mix h100 4, a100 1" in status["reason"]

        # the policy loses its A100 variant: its record and its HPA go
        assert policy.variants is not None
        one = replace(policy.variants, targets=policy.variants.targets[:1], prefer=("h100",))
        doc = policy_configmap(replace(policy, variants=one))
        kube.store.patch("configmaps", NS, policy.name, {"data": doc["data"]})
        await wait_until(
            lambda: (
                kube.store.get("horizontalpodautoscalers", NS, "gpuscale-llama-mixed-a100") is None
            )
        )
        await wait_until(lambda: set(_counts(store, policy.name)) == {"h100"})


async def test_unschedulable_pods_spill_onto_the_next_variant_and_it_recovers(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = _policy(cold_start=2.0)
    kube.store.create(deployment("llama-h100", NS, 4))  # the HPA asked for 4 ...
    kube.store.create(deployment("llama-a100", NS, 0))
    for i in range(2):
        _create(kube, _pod(f"llama-h100-run-{i}", "llama-h100", reason=None))
        _placed(kube, f"llama-h100-run-{i}")
    for i in range(2):  # ... and 2 find no H100
        _create(kube, _pod(f"llama-h100-{i}", "llama-h100"))
    kube.store.create(policy_configmap(policy))
    _answer(fake_prometheus, policy, LOAD)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    spilled = _expected(policy, {"h100": 2})
    assert spilled == {"h100": 2, "a100": 7}
    async with run_controller(settings) as rc:
        store = rc.controller.store
        await wait_until(lambda: _counts(store, policy.name) == spilled)
        status = await wait_until(
            lambda: (s := _status(kube, policy.name)) and s["state"] == "CapacityLimited" and s
        )
        assert "h100 at most 2 (2 unschedulable)" in status["reason"]
        assert status["unschedulablePods"] == 2
        assert status["variants"][0] == {
            "name": "h100",
            "desiredReplicas": 2,
            "currentReplicas": 4,
            "unschedulablePods": 2,
        }
        assert rc.controller.policy_states()["CapacityLimited"] == 1

        for i in range(2):  # GPUs free up: after coldStart the H100s are tried again
            _placed(kube, f"llama-h100-{i}")
        await wait_until(lambda: _counts(store, policy.name) == {"h100": 4, "a100": 1})
        await wait_until(lambda: (s := _status(kube, policy.name)) and s["state"] == "Active")
        reasons = [
            e["reason"]
            for e in kube.store.list("events", NS)
            if e["involvedObject"]["name"] == policy.name
        ]
        assert reasons.count("CapacityLimited") == 1 and "CapacityAvailable" in reasons


async def test_a_missing_metric_holds_every_variant(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = _policy()
    kube.store.create(deployment("llama-h100", NS, 3))
    kube.store.create(deployment("llama-a100", NS, 2))
    kube.store.create(policy_configmap(policy))  # no answers: every query is missing
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        store = rc.controller.store
        await wait_until(lambda: _counts(store, policy.name) == {"h100": 3, "a100": 2})
        status = await wait_until(lambda: _status(kube, policy.name))
        assert status["state"] == "MetricsUnavailable"
        assert status["reason"].startswith("holding the mix h100 3, a100 2")
        assert rc.controller.policy_states()["MetricsUnavailable"] == 1


async def test_each_variants_hpa_reads_only_its_own_count() -> None:
    store = DecisionStore()
    store.put(Published(NS, "mixed", 4, 10.0, 10.0, variant="h100"))
    store.put(Published(NS, "mixed", 7, 10.0, 10.0, variant="a100"))
    store.put(Published(NS, "single", 3, 10.0, 10.0))
    app = build_app(store, ExternalMetricsSettings(), wall=lambda: 11.0)
    async with TestClient(TestServer(app)) as client:
        path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/gpuscale_desired_replicas"

        async def values(selector: str) -> list[tuple[dict[str, str], str]]:
            resp = await client.get(path, params={"labelSelector": selector})
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            return [(i["metricLabels"], i["value"]) for i in body["items"]]

        assert await values("gpuscale.io/policy=mixed,gpuscale.io/variant=a100") == [
            ({"gpuscale.io/policy": "mixed", "gpuscale.io/variant": "a100"}, "7")
        ]
        assert await values("gpuscale.io/policy=single") == [
            ({"gpuscale.io/policy": "single"}, "3")
        ]
        resp = await client.get(
            path, params={"labelSelector": "gpuscale.io/policy=mixed,gpuscale.io/variant=l4"}
        )
        assert resp.status == 404
    store.retain(NS, "mixed", frozenset({"h100"}))
    assert [p.variant for p in store.of_policy(NS, "mixed")] == ["h100"]
    store.remove(NS, "mixed")
    assert len(store) == 1


@pytest.mark.slow
async def test_with_a_real_prometheus_each_hpa_reads_its_variants_count(
    kube: KubeStandIn, inference_server: InferenceServer, prometheus: PrometheusServer, certs: Certs
) -> None:
    """A real Prometheus scraping the stand-in vLLM server; each variant's count read over HTTPS
    as its HPA reads it. A gauge stands in for the request rate (so the value is exact) and the
    token mix is fixed means, both through the policy's own fields."""
    rate = 'sum(vllm:num_requests_running{model_name="llama"})'
    base = _policy()
    metric = base.metrics[0]
    assert isinstance(metric, ModelCapacityMetric)
    metric = replace(
        metric,
        query=rate,
        prompt_tokens_query=None,
        generation_tokens_query=None,
        prompt_tokens=800.0,
        generated_tokens=200.0,
    )
    policy = replace(base, metrics=(metric,))
    kube.store.create(deployment("llama-h100", NS, 1))
    kube.store.create(deployment("llama-a100", NS, 1))
    kube.store.create(policy_configmap(policy))
    inference_server.set_running(200)
    await prometheus.wait_for_value(rate, lambda v: v == 200)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        assert port is not None

        async def count(variant: str) -> int | None:
            url = (
                f"https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/"
                f"{NS}/gpuscale_desired_replicas"
            )
            selector = f"gpuscale.io/policy={policy.name},gpuscale.io/variant={variant}"
            async with session.get(
                url,
                params={"labelSelector": selector},
                headers={"X-Remote-User": HPA_USER},
                ssl=certs.client_context(),
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
                return metric_count(body)

        await wait_until(lambda: _eq_async(count("h100"), 4))
        assert await count("a100") == 1
        inference_server.set_running(20)  # the load falls: one H100 carries it
        await wait_until(lambda: _eq_async(count("h100"), 1))
        assert await count("a100") == 1  # its min


async def _eq_async(value: Any, expected: int) -> bool:
    return bool(await value == expected)
