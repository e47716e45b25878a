"""Each fault from issue 3, against the running controller with real parts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from policies.schema import LatencyMetric, QueueDepthMetric
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    external_metric,
    leader_settings,
    make_policy,
    metric_count,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.support.inference_server import InferenceServer
from tests.support.kube_standin import KubeStandIn
from tests.support.prometheus import PrometheusServer

NS = "inference"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'


def _status(kube: KubeStandIn, name: str) -> dict[str, Any] | None:
    cm = kube.store.get("configmaps", NS, name)
    text = ((cm or {}).get("metadata", {}).get("annotations") or {}).get("gpuscale.io/status")
    return json.loads(text) if text else None


def _events(kube: KubeStandIn, name: str) -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["reason"], e["message"])
        for e in kube.store.list("events", NS)
        if e["involvedObject"]["name"] == name
    ]


async def _count(session: aiohttp.ClientSession, port: int | None, name: str, certs: Certs) -> Any:
    assert port is not None
    status, body = await external_metric(session, port, NS, name, certs)
    return metric_count(body) if status == 200 else (status, body)


@pytest.mark.slow
async def test_prometheus_stopped_mid_run_holds_then_recovers(
    kube: KubeStandIn, inference_server: InferenceServer, prometheus: PrometheusServer, certs: Certs
) -> None:
    policy = make_policy("llama", NS, metrics=(QueueDepthMetric("queue", QUEUE, 4.0),))
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    inference_server.set_waiting(20)
    await prometheus.wait_for_value(QUEUE, lambda v: v == 20)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        prometheus.url, kube.kubeconfig_path, certs, stale_after=3.0, prometheus_timeout=0.5
    )
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        await wait_until(lambda: _eq(_count(session, port, "llama", certs), 5))
        kube.store.patch("deployments", NS, "llama", {"spec": {"replicas": 5}})  # the HPA acts

        await prometheus.astop()
        status = await wait_until(
            lambda: (s := _status(kube, "llama")) and s["state"] == "MetricsUnavailable" and s
        )
        assert status["desiredReplicas"] == 5
        assert "unreachable" in status["reason"] or "did not answer" in status["reason"]
        assert await _count(session, port, "llama", certs) == 5  # holds while not stale
        stale = await wait_until(
            lambda: _is_error(_count(session, port, "llama", certs)), within=10
        )
        assert stale[0] == 503 and "stale" in stale[1]["message"]
        await wait_until(
            lambda: any(r == "MetricsUnavailable" for _, r, _ in _events(kube, "llama"))
        )
        errors = rc.controller.metrics.registry.get_sample_value(
            "gpuscale_errors_total", {"kind": "prometheus"}
        )
        assert errors and errors > 0

        await prometheus.astart()
        await wait_until(lambda: _eq(_count(session, port, "llama", certs), 5), within=15)
        await wait_until(lambda: (s := _status(kube, "llama")) and s["state"] == "Active")
        await wait_until(lambda: any(r == "MetricsAvailable" for _, r, _ in _events(kube, "llama")))
        warnings = [r for _, r, _ in _events(kube, "llama") if r == "MetricsUnavailable"]
        assert len(warnings) == 1  # not repeated every tick


@pytest.mark.slow
async def test_nan_and_empty_queries_are_missing_not_zero(
    kube: KubeStandIn, inference_server: InferenceServer, prometheus: PrometheusServer, certs: Certs
) -> None:
    no_requests_yet = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(vllm:e2e_request_latency_seconds_bucket{model_name="llama"}[5s])))'
    )
    nan = make_policy("nan", NS, metrics=(LatencyMetric("latency", no_requests_yet, 1.0),))
    empty_query = 'sum(vllm:num_requests_waiting{model_name="nobody"})'
    empty = make_policy("empty", NS, metrics=(QueueDepthMetric("queue", empty_query, 4.0),))
    for policy, replicas in ((nan, 3), (empty, 2)):
        kube.store.create(deployment(policy.name, NS, replicas))
        kube.store.create(policy_configmap(policy))
    await inference_server.wait_for_scrapes(2)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        nan_status = await wait_until(lambda: _status(kube, "nan"))
        empty_status = await wait_until(lambda: _status(kube, "empty"))
        assert nan_status["state"] == "MetricsUnavailable" and "NaN" in nan_status["reason"]
        assert empty_status["state"] == "MetricsUnavailable"
        assert "no series" in empty_status["reason"]
        assert nan_status["metricsMissing"] == ["latency"]
        # The count holds at the current replicas: never scaled towards zero or the minimum.
        assert await _count(session, port, "nan", certs) == 3
        assert await _count(session, port, "empty", certs) == 2
        missing = rc.controller.metrics.registry.get_sample_value(
            "gpuscale_errors_total", {"kind": "metric_missing"}
        )
        assert missing and missing >= 2


async def test_invalid_policy_reports_and_keeps_the_last_good_version(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    good = make_policy("good", NS)
    edited = make_policy("edited", NS)
    for policy in (good, edited):
        kube.store.create(deployment(policy.name, NS, 1))
        kube.store.create(policy_configmap(policy))
        fake_prometheus.answers[policy.metrics[0].query] = 8.0
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        await wait_until(lambda: _eq(_count(session, port, "edited", certs), 2))
        await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-edited")

        broken = policy_configmap(edited)
        broken["data"]["policy.yaml"] = "target: [unclosed\n"
        kube.store.put(broken)
        status = await wait_until(
            lambda: (s := _status(kube, "edited")) and s["state"] == "Invalid" and s
        )
        assert status["errors"] and "data.policy.yaml" in status["errors"][0]
        assert status["runningResourceVersion"]
        invalid = await wait_until(
            lambda: [(t, m) for t, r, m in _events(kube, "edited") if r == "InvalidPolicy"]
        )
        assert len(invalid) == 1 and invalid[0][0] == "Warning"
        assert "keeps running" in invalid[0][1]

        # The last good version keeps running and follows its metric; the other policy too.
        fake_prometheus.answers[edited.metrics[0].query] = 16.0
        fake_prometheus.answers[good.metrics[0].query] = 12.0
        await wait_until(lambda: _eq(_count(session, port, "edited", certs), 4))
        await wait_until(lambda: _eq(_count(session, port, "good", certs), 3))
        assert len([r for _, r, _ in _events(kube, "edited") if r == "InvalidPolicy"]) == 1

        # A new policy that was never valid: reported, no HPA, no metric.
        never = policy_configmap(make_policy("never", NS))
        never["data"]["policy.yaml"] = "replicas: {min: 5, max: 2}\n"
        kube.store.create(never)
        never_status = await wait_until(lambda: _status(kube, "never"))
        assert never_status["state"] == "Invalid"
        await wait_until(lambda: any(r == "InvalidPolicy" for _, r, _ in _events(kube, "never")))
        assert kube.store.get("horizontalpodautoscalers", NS, "gpuscale-never") is None
        assert (await _count(session, port, "never", certs))[0] == 404
        invalid_gauge = rc.controller.metrics.registry.get_sample_value(
            "gpuscale_policies", {"state": "invalid"}
        )
        assert invalid_gauge == 2


async def test_hpa_update_conflict_is_reread_and_retried(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS, max_replicas=20)
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings):
        await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-llama")
        # Someone else writes the HPA between our read and our update: one 409, then success.
        rule = kube.faults.fail("PUT", "*/horizontalpodautoscalers/gpuscale-llama", status=409)
        kube.store.put(policy_configmap(make_policy("llama", NS, max_replicas=6)))
        await kube.wait_for_object(
            "horizontalpodautoscalers",
            NS,
            "gpuscale-llama",
            lambda h: h["spec"]["maxReplicas"] == 6,
        )
        assert rule.hits == 1


async def test_policies_changed_while_the_watch_was_gone_are_not_lost(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    kube.store.create(deployment("first", NS, 1))
    kube.store.create(policy_configmap(make_policy("first", NS)))
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-first")
        await kube.wait_for_watch("configmaps")
        kube.faults.fail("GET", "/api/v1/configmaps", watch=True, status=500, times=2)
        kube.drop_watches()
        kube.store.create(deployment("second", NS, 1))
        kube.store.create(policy_configmap(make_policy("second", NS)))
        kube.store.delete("configmaps", NS, "first")
        kube.compact()  # the resourceVersion the controller resumes from is gone: 410
        await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-second")
        await wait_until(lambda: set(rc.controller.source.entries) == {f"{NS}/second"})
        await wait_until(
            lambda: kube.store.get("horizontalpodautoscalers", NS, "gpuscale-first") is None
        )
        assert rc.controller.source.relists == 2


@pytest.mark.slow
async def test_killed_leader_is_replaced_and_only_the_leader_writes(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    fast: dict[str, Any] = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(make_policy("llama", NS)))
    fake_prometheus.answers[make_policy("llama", NS).metrics[0].query] = 12.0
    assert kube.kubeconfig_path is not None
    base = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs, leader_elect=True)
    settings_a = replace(base, leader=leader_settings("replica-a", **fast))
    settings_b = replace(base, leader=leader_settings("replica-b", **fast))
    loop = asyncio.get_running_loop()

    def writers() -> set[str]:
        return {
            r.user_agent.rsplit("/", 1)[-1]
            for r in kube.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and "/leases" not in r.path
        }

    async with run_controller(settings_a) as a:
        await wait_until(lambda: a.controller.leadership.is_leader, within=5)
        async with run_controller(settings_b) as b, aiohttp.ClientSession() as session:
            await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-llama")
            # Both replicas decide and serve the same count.
            await wait_until(lambda: _eq(_count(session, a.running.secure_port, "llama", certs), 3))
            await wait_until(lambda: _eq(_count(session, b.running.secure_port, "llama", certs), 3))
            assert not b.controller.leadership.is_leader
            assert writers() == {"replica-a"}

            # Kill a: no lease release, no clean shutdown of its election.
            a.controller.leadership.release_on_exit = False
            a.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a.task
            killed = loop.time()
            await wait_until(lambda: b.controller.leadership.is_leader, within=10, every=0.02)
            assert loop.time() - killed <= 3.0 + 0.6
            kube.store.create(deployment("mistral", NS, 1))
            kube.store.create(policy_configmap(make_policy("mistral", NS)))
            await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-mistral")
            assert writers() == {"replica-a", "replica-b"}
            hpa_writes = [
                r.user_agent.rsplit("/", 1)[-1]
                for r in kube.requests
                if r.method == "POST" and r.path.endswith("/horizontalpodautoscalers")
            ]
            assert hpa_writes == ["replica-a", "replica-b"]


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _is_error(value: Any) -> Any:
    result = await value
    return result if isinstance(result, tuple) else None
