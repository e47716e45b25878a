"""The process around the controller: ops endpoints, readiness, SIGTERM, the CLI, actuation."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from autoscaler import app
from gpuscale.cli import main as cli_main
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
from tests.support.prometheus import free_port

NS = "inference"
EXPORTED = (
    "gpuscale_decisions_total",
    "gpuscale_desired_replicas",
    "gpuscale_recommended_replicas",
    "gpuscale_current_replicas",
    "gpuscale_decision_timestamp_seconds",
    "gpuscale_metric_value",
    "gpuscale_metric_target",
    "gpuscale_winning_metric_info",
    "gpuscale_prometheus_query_duration_seconds_bucket",
    "gpuscale_decision_duration_seconds_bucket",
    "gpuscale_policies",
    "gpuscale_is_leader",
)


async def _get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def test_readiness_waits_for_the_policy_list_and_fails_first_on_stop(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS)
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[policy.metrics[0].query] = 4.0
    kube.faults.delay("GET", "/api/v1/configmaps", 0.5, watch=False, times=1)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    stop = asyncio.Event()
    seen: dict[str, Any] = {}

    async with aiohttp.ClientSession() as session:

        async def on_running(running: app.Running) -> None:
            seen["running"] = running
            seen["before_list"] = await _get(session, running.ops_port, "/readyz")
            seen["livez"] = await _get(session, running.ops_port, "/livez")

        task = asyncio.create_task(app.run(settings, stop, on_running=on_running))
        await wait_until(lambda: "livez" in seen)  # on_running asks /readyz, then /livez
        running: app.Running = seen["running"]
        assert seen["before_list"] == (503, "not ready: policies not listed yet\n")
        assert seen["livez"][0] == 200
        await asyncio.wait_for(running.ready.wait(), 10)
        assert (await _get(session, running.ops_port, "/readyz"))[0] == 200

        await wait_until(lambda: running.controller.store.get(NS, "llama") is not None)
        fake_prometheus.delay = 1.5  # the next tick is in flight when SIGTERM arrives
        await wait_until(lambda: running.controller.scheduler._in_flight > 0, within=5)
        stop.set()
        status, text = await _get(session, running.ops_port, "/readyz")
        assert (status, text) == (503, "not ready: shutting down\n")
        assert not task.done()  # still draining the in-flight tick
        assert await asyncio.wait_for(task, 10) == 0


async def test_metrics_endpoint_exports_the_documented_names(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS)
    kube.store.create(deployment("llama", NS, 2))
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[policy.metrics[0].query] = 20.0
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        await wait_until(lambda: rc.controller.store.get(NS, "llama") is not None)
        status, text = await _get(session, rc.running.ops_port, "/metrics")
    assert status == 200
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert set(EXPORTED) <= names
    assert 'gpuscale_desired_replicas{namespace="inference",policy="llama"} 5.0' in text
    assert (
        'gpuscale_winning_metric_info{metric="queue",namespace="inference",policy="llama"} 1.0'
        in text
    )
    assert "gpuscale_is_leader 1.0" in text


async def test_prometheus_actuation_exports_a_gauge_and_creates_no_hpa(
    kube: KubeStandIn, fake_prometheus: FakePrometheus
) -> None:
    policy = make_policy("llama", NS)
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[policy.metrics[0].query] = 12.0
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        fake_prometheus.url, kube.kubeconfig_path, None, actuation="prometheus"
    )
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        assert rc.running.secure_port is None

        async def exported() -> bool:
            _, text = await _get(session, rc.running.ops_port, "/metrics")
            return 'gpuscale_desired_replicas{namespace="inference",policy="llama"} 3.0' in text

        await wait_until(exported)
    assert kube.store.list("horizontalpodautoscalers") == []
    assert not kube.requests_matching(None, "/version")


def test_bad_flags_exit_1_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        ["controller", "--prometheus-url", "http://p:9090", "--stale-after", "soon",
         "--tls-cert-file", "/nonexistent/tls.crt"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "--stale-after" in err and "--tls-cert-file" in err and "Traceback" not in err


def test_unreachable_cluster_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    code = cli_main(
        ["controller", "--prometheus-url", "http://p:9090", "--kubeconfig", str(broken),
         "--ops-address", "127.0.0.1:0", "--secure-address", "127.0.0.1:0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "Kubernetes configuration" in err and "Traceback" not in err


@pytest.mark.slow
async def test_sigterm_drains_and_exits_0_within_10_seconds(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS)
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[policy.metrics[0].query] = 8.0
    ops_port, secure_port = free_port(), free_port()
    assert kube.kubeconfig_path is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpuscale", "controller",
        "--kubeconfig", str(kube.kubeconfig_path),
        "--prometheus-url", fake_prometheus.url,
        "--ops-address", f"127.0.0.1:{ops_port}",
        "--secure-address", f"127.0.0.1:{secure_port}",
        "--tls-cert-file", certs.cert_file,
        "--tls-private-key-file", certs.key_file,
        "--no-leader-elect",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    return (await _get(session, ops_port, "/readyz"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, within=30, every=0.2)
            await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-llama")
            await kube.wait_for_object(
                "configmaps", NS, "llama", lambda o: "annotations" in o["metadata"]
            )
        loop = asyncio.get_running_loop()
        start = loop.time()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
        assert loop.time() - start < 10
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = (await proc.stderr.read()).decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    names = [e["event"] for e in events]
    assert "controller started" in names and "controller stopped" in names
    assert names.index("stopping: draining ticks") < names.index("controller stopped")
    written = [e for e in events if e["event"] == "status written"]
    assert written and written[0]["policy"] == f"{NS}/llama" and written[0]["level"] == "info"


async def test_steady_state_writes_nothing_after_the_first_status(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    policy = make_policy("llama", NS)
    kube.store.create(deployment("llama", NS, 3))
    kube.store.create(policy_configmap(policy))
    fake_prometheus.answers[policy.metrics[0].query] = 10.0  # wants 3 = what runs
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        await wait_until(lambda: len(fake_prometheus.calls) >= 5, within=10)
        decisions = rc.controller.metrics.registry.get_sample_value(
            "gpuscale_decisions_total", {"namespace": NS, "policy": "llama"}
        )
        assert decisions is not None and decisions >= 4
    patches = kube.requests_matching("PATCH", f"/api/v1/namespaces/{NS}/configmaps/llama")
    assert len(patches) == 1
    assert not kube.requests_matching("POST", f"/api/v1/namespaces/{NS}/events")
    # Counts come from the watch; at most the first tick, before it listed, reads the scale.
    assert len(kube.requests_matching("GET", "*/scale")) <= 1
